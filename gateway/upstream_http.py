"""The upstream HTTP/1.1 client: keep-alive connections per upstream, one write per request, responses parsed in place.

Forwarding is the gateway's hottest path. ``aiohttp.ClientSession`` builds a
request object, a URL, a header multidict, a response object, a cookie jar
pass and trace hooks for every call; the gateway needs none of that. This
client keeps a pool of ``asyncio.Protocol`` connections to one origin,
writes the request head and body in one ``transport.write``, and parses the
response head and its body framing (``Content-Length``, ``chunked``, or
read-until-close) as bytes arrive, so a whole JSON answer is usually one
``data_received`` and no extra task switch.

What it deliberately does not do: redirects, cookies, proxies, HTTP/2,
request retries. Timeouts are the caller's (``gateway/deadlines.py``); a
cancelled call closes its connection, so a half-read response never goes
back to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import zlib
from urllib.parse import urlsplit

__all__ = [
    "HttpError",
    "ConnectError",
    "ResponseError",
    "UpstreamHttp",
    "Response",
]

# Body bytes buffered unread before the socket stops being read (a slow client on a fast stream).
_HIGH_WATER = 1 << 20
_MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class HttpError(Exception):
    """The upstream connection failed or answered something that is not HTTP/1.1."""


class ConnectError(HttpError):
    """No connection could be opened (refused, unreachable, DNS, TLS handshake, connect timeout)."""

    def __init__(self, message: str, os_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ResponseError(HttpError):
    """The connection closed early or the response broke HTTP/1.1 framing."""


# Parser states of a connection.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE, _DONE = range(9)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses its response, buffers the body for one reader."""

    __slots__ = (
        "transport", "state", "buffer", "body", "body_size", "remaining", "waiter", "error", "closed",
        "status", "headers", "keep_alive", "paused", "idle_since", "head_request",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.buffer = b""  # unparsed bytes (head, chunk framing)
        self.body: list[bytes] = []
        self.body_size = 0
        self.remaining = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: HttpError | None = None
        self.closed = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.paused = False
        self.idle_since = 0.0
        self.head_request = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass  # not TCP (tests on Unix sockets) or already set

    def data_received(self, data: bytes) -> None:
        if self.state == _IDLE or self.state == _DONE:
            # Bytes nobody asked for: the connection can no longer be trusted to frame the next response.
            self._fail(ResponseError("upstream sent data outside a response"))
            return
        try:
            self._feed(data)
        except ResponseError as exc:
            self._fail(exc)
            return
        if self.body_size > _HIGH_WATER and not self.paused and self.state != _DONE:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
            self.keep_alive = False
            self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.state == _UNTIL_CLOSE and exc is None:  # a clean close ends a body without length; a reset does not
            self.state = _DONE
        elif self.state != _DONE and self.state != _IDLE and self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = ResponseError(f"upstream closed the connection before the response was complete{reason}")
        self._wake()

    # ------------------------------------------------------------ parsing

    def _feed(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        while data:
            state = self.state
            if state == _LENGTH:
                # Bytes past the Content-Length reach _DONE below: the body stands, the connection is retired.
                data = self._take_counted(data, _DONE)
            elif state == _UNTIL_CLOSE:
                self._take(data)
                data = b""
            elif state == _CHUNK_DATA:
                data = self._take_counted(data, _CHUNK_END)
            elif state == _CHUNK_END:
                if len(data) < 2:
                    self.buffer = data
                    return
                if data[:2] != b"\r\n":
                    raise ResponseError("upstream chunk not followed by CRLF")
                data = data[2:]
                self.state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > 1024:
                        raise ResponseError("upstream chunk size line too long")
                    self.buffer = data
                    return
                line = data[:end].split(b";", 1)[0].strip()
                data = data[end + 2 :]
                # int() alone would also take "0x", "+", "-" and "_"; a chunk size is bare hex digits.
                if not line or len(line) > 16 or line.strip(b"0123456789abcdefABCDEF"):
                    raise ResponseError(f"upstream sent a malformed chunk size {line[:32]!r}")
                size = int(line, 16)
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.remaining = size
                    self.state = _CHUNK_DATA
            elif state == _TRAILER:
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) > _MAX_HEAD:
                        raise ResponseError("upstream trailer too long")
                    self.buffer = data
                    return
                data = data[end + 2 :]
                if end == 0:  # the empty line that ends the trailer section
                    self.state = _DONE
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > _MAX_HEAD:
                        raise ResponseError("upstream response head too large")
                    self.buffer = data
                    return
                head = data[:end]
                data = data[end + 4 :]
                self._parse_head(head)
            else:  # _DONE: anything after a complete response is a framing error
                raise ResponseError("upstream sent data after the response ended")

    def _take_counted(self, data: bytes, then: int) -> bytes:
        """Take up to ``remaining`` body bytes; when none remain, go to state ``then``. Returns the bytes left over."""
        n = self.remaining
        if len(data) < n:
            self._take(data)
            self.remaining = n - len(data)
            return b""
        self._take(data[:n] if len(data) > n else data)
        self.remaining = 0
        self.state = then
        return data[n:]

    def _take(self, data: bytes) -> None:
        self.body.append(data)
        self.body_size += len(data)

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        if status_line[:7] != b"HTTP/1." or len(status_line) < 12 or status_line[12:13] not in (b"", b" "):
            raise ResponseError(f"upstream answered something that is not HTTP/1.x: {status_line[:40]!r}")
        try:
            status = int(status_line[9:12])
        except ValueError:
            raise ResponseError(f"upstream sent a malformed status line: {status_line[:40]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ResponseError(f"upstream sent a malformed header line: {line[:40]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            previous = headers.get(key)
            headers[key] = text if previous is None else f"{previous}, {text}"
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real head follows
        self.status = status
        self.headers = headers
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection if status_line[7:8] == b"1" else "keep-alive" in connection
        if self.head_request or status in _NO_BODY_STATUS:
            self.state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = _CHUNK_SIZE
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit() or not length.isascii():  # no sign, no "_", no list of values
                raise ResponseError(f"upstream sent a malformed Content-Length {length[:32]!r}")
            self.remaining = int(length)
            self.state = _LENGTH if self.remaining else _DONE
        else:
            self.state = _UNTIL_CLOSE
            self.keep_alive = False

    # ------------------------------------------------------------ the reader's side

    def _fail(self, exc: HttpError) -> None:
        if self.error is None:
            self.error = exc
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        await waiter

    def send(self, data: bytes, head_request: bool) -> None:
        assert self.transport is not None
        self.state = _HEAD
        self.head_request = head_request
        self.status = 0
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.transport.write(data)

    async def read_head(self) -> None:
        while self.status == 0:
            if self.error is not None:
                raise self.error
            if self.closed:
                raise ResponseError("upstream closed the connection before answering")
            await self._wait()

    async def read_chunk(self) -> bytes:
        """The body bytes received so far and not yet read; ``b""`` once the body is complete."""
        while True:
            if self.body:
                body = self.body
                data = body[0] if len(body) == 1 else b"".join(body)
                self.body = []
                self.body_size = 0
                if self.paused:
                    self.paused = False
                    assert self.transport is not None
                    self.transport.resume_reading()
                return data
            if self.state == _DONE:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait()

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return self.state == _DONE and self.keep_alive and not self.closed and self.error is None


class Response:
    """An upstream answer whose head has arrived; read the body, then ``release()`` (or ``close()``)."""

    __slots__ = ("status", "headers", "_conn", "_pool", "_inflate", "_finished")

    def __init__(self, conn: _Connection, pool: UpstreamHttp) -> None:
        self.status = conn.status
        self.headers = conn.headers  # lower-case names
        self._conn: _Connection | None = conn
        self._pool = pool
        self._finished = False
        coding = conn.headers.get("content-encoding", "identity").lower()
        if coding in ("identity", ""):
            self._inflate = None
        elif coding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(47)  # gzip or zlib, told apart by the header bytes
        else:
            conn.close()
            raise ResponseError(f"upstream answered with an unsupported content-encoding {coding!r}")

    async def readany(self) -> bytes:
        """The next piece of the body as it arrives; ``b""`` at its end."""
        conn = self._conn
        if conn is None or self._finished:
            return b""
        while True:
            data = await conn.read_chunk()
            if not data:
                self._finished = True
                if self._inflate is None:
                    return b""
                if not self._inflate.eof:
                    conn.close()
                    raise ResponseError("upstream's compressed body ended before the compressed stream did")
                return self._inflate.flush()
            if self._inflate is None:
                return data
            try:
                data = self._inflate.decompress(data)
            except zlib.error as exc:
                conn.close()
                raise ResponseError(f"upstream sent a corrupt compressed body: {exc}") from None
            if data:
                return data

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back: to the pool when the response was read to its end, closed otherwise."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            self._pool._release(conn)

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close()
            self._pool._release(conn)


class UpstreamHttp:
    """A pool of at most ``max_connections`` keep-alive connections to the origin of ``base_url``."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int = 256,
        keepalive: float = 30.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self.port = parts.port or default_port
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        host_text = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host_text if self.port == default_port else f"{host_text}:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self.max_connections = max_connections
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.in_use = 0
        self.closed = False
        self._idle: list[_Connection] = []
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
        """Send one request (``path`` is appended to the base URL's path) and wait for the response head.

        ``headers`` must not carry ``Host``, ``Content-Length`` or ``Transfer-Encoding``: those
        are this client's. Raises :class:`ConnectError` or :class:`ResponseError`.
        """
        if self.closed:
            raise ConnectError("the upstream client is closed")
        if self.in_use >= self.max_connections:
            await self._wait_for_slot()
        self.in_use += 1
        conn: _Connection | None = None
        try:
            conn = self._take_idle()
            if conn is None:
                conn = await self._connect()
            lines = [f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
            for name, value in headers:
                lines.append(f"{name}: {value}\r\n")
            if body or method in ("POST", "PUT", "PATCH"):
                lines.append(f"Content-Length: {len(body)}\r\n")
            lines.append("\r\n")
            conn.send("".join(lines).encode("utf-8", "surrogateescape") + body, method == "HEAD")
            await conn.read_head()
            return Response(conn, self)
        except BaseException:
            if conn is not None:
                conn.close()
            self._free_slot()
            raise

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.error is None:
                return conn
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
                )
        except TimeoutError:
            raise ConnectError(f"connect to {self.host}:{self.port} timed out after {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc), exc) from None
        return conn

    def _release(self, conn: _Connection) -> None:
        self._free_slot()
        if conn.reusable and not self.closed:
            conn.state = _IDLE
            loop = asyncio.get_running_loop()
            conn.idle_since = loop.time()
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self.keepalive, self._sweep)
        else:
            conn.close()

    def _free_slot(self) -> None:
        self.in_use -= 1
        self._wake_next()

    async def _wait_for_slot(self) -> None:
        while self.in_use >= self.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self._queue.append(waiter)
            try:
                await waiter
            except BaseException:
                # Pass a wake-up this waiter can no longer use on to the next one.
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()
                raise

    def _wake_next(self) -> None:
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _sweep(self) -> None:
        """Close the connections idle for longer than ``keepalive``; runs while any connection is idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - self.keepalive
        keep = []
        for conn in self._idle:
            if conn.closed:
                continue
            if conn.idle_since <= cutoff:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep
        if keep:
            self._sweeper = loop.call_later(max(0.05, keep[0].idle_since + self.keepalive - loop.time()), self._sweep)

    @property
    def idle_connections(self) -> int:
        return sum(1 for conn in self._idle if not conn.closed)

    async def close(self) -> None:
        """Close idle connections now; connections in use close when their response is released."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._idle:
            conn.close()
        self._idle = []
        for waiter in self._queue:
            if not waiter.done():
                waiter.set_exception(ConnectError("the upstream client is closed"))
        self._queue.clear()
