"""The upstream HTTP/1.1 client: keep-alive connections per upstream, one write per request, responses parsed by llhttp.

Forwarding is the gateway's hottest path. ``aiohttp.ClientSession`` builds a
request object, a URL, a header multidict, a response object, a cookie jar
pass and trace hooks for every call; the gateway needs none of that. This
client keeps a pool of ``asyncio.Protocol`` connections to one origin,
writes the request head and body in one ``transport.write``, and feeds the
answer to llhttp (``httptools.HttpResponseParser``) as bytes arrive: llhttp
owns the framing (status line, header syntax, ``Content-Length``, the one
chunked decoder, trailers), but for a stream's usual piece: whole chunks where
llhttp waits at a chunk's start are read here as it would read them
(``_chunks``). This module keeps the policy on top of it (HTTP/1.x
only, a bounded head, interim answers skipped, nothing accepted after the
answer ended, a reset never taken for the end of a body without length). A
whole JSON answer is usually one ``data_received`` and no extra task switch.

With ``resolve_every`` (an upstream's ``pool.resolve_every``) it re-resolves the host
that often and opens each new connection to the next of its addresses: a Kubernetes
headless Service names one address per replica, so replicas a scaler adds get traffic.
When the set changes, connections of the old set are not reused (idle ones close at
once, busy ones when their answer ends), and new ones spread over the new set.

What it deliberately does not do: redirects, cookies, proxies, HTTP/2,
request retries. Timeouts are the caller's (``tollgate/upstream/deadlines.py``); a
cancelled call closes its connection, so a half-read response never goes
back to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import math
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import httptools
from mypy_extensions import mypyc_attr

__all__ = [
    "ConnectError",
    "HttpError",
    "ResponseError",
    "TracedHttp",
    "UpstreamHttp",
    "UpstreamResponse",
]

log = logging.getLogger("tollgate.upstream")

# Body bytes buffered unread before the socket stops being read (a slow client on a fast stream).
_HIGH_WATER: Final = 1 << 20
# Bytes of one answer's head (interim answers included) and trailers at most.
_MAX_HEAD: Final = 64 * 1024
# Methods whose request says its body's length, even an empty one.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_STARTS_KEPT: Final = 64


# An Anthropic stream's error event is one of its subclasses (tollgate/upstream/anthropic.py), even when compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class HttpError(Exception):
    """The upstream connection failed or answered something that is not HTTP/1.1."""


class ConnectError(HttpError):
    """No connection could be opened (refused, unreachable, DNS, TLS handshake, connect timeout)."""

    def __init__(self, message: str, os_error: BaseException | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ResponseError(HttpError):
    """The connection closed early or the response broke HTTP/1.1 framing."""


class _HeadEnds(Exception):
    """Raised from the parser's head callback to end an answer to HEAD there (llhttp would wait for its body)."""


# States of a connection: no request out, waiting for the head, reading the body, answer complete. Final: a
# compiled build reads them as constants, not from the module's dictionary (several times a piece of a stream).
_IDLE: Final = 0
_HEAD: Final = 1
_BODY: Final = 2
_DONE: Final = 3


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection: writes a request, lets llhttp parse its answer, buffers the body for one reader."""

    __slots__ = (
        "transport",
        "parser",
        "state",
        "body",
        "body_size",
        "waiter",
        "reader",
        "error",
        "closed",
        "status",
        "headers",
        "keep_alive",
        "paused",
        "idle_since",
        "head_request",
        "head_bytes",
        "header_bytes",
        "until_close",
        "status_line",
        "http1",
        "generation",
        "loop",
        "pump",
        "pump_run",
        "stopped",
        "chunk_end",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # kept: asyncio.get_running_loop() costs a getpid() system call on Python 3.11
        self.transport: asyncio.Transport | None = None
        # The address set it was opened under (UpstreamHttp.generation): an older one is not reused.
        self.generation = 0
        self.parser: httptools.HttpResponseParser | None = None  # made when a request goes out
        self.state = _IDLE
        self.body: list[bytes] = []
        self.body_size = 0
        self.waiter: asyncio.Future[None] | None = None
        # A stream's reader waiting for its next piece: resolved with the piece itself (see UpstreamResponse.readany).
        self.reader: asyncio.Future[Any] | None = None
        # What takes the pieces that arrive while the reader waits, in this connection's callbacks (see
        # UpstreamResponse.relay); None: they go to the reader.
        self.pump: Callable[[bytes], bool] | None = None
        # What runs the pump on a piece: the ``run`` of a copy of its caller's context (see UpstreamResponse.relay).
        self.pump_run: Callable[[Callable[[bytes], bool], bytes], bool] | None = None
        self.error: HttpError | None = None
        # What one of llhttp's callbacks raised to stop the parser, for _parse_failed. httptools also hands it on
        # as its error's __context__, but Python replaces that when the error is raised while another exception
        # is being handled, which the compiled build was seen to leave set after some tests: the cause was lost.
        self.stopped: BaseException | None = None
        self.closed = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self.paused = False
        self.idle_since = 0.0
        self.head_request = False
        self.head_bytes = 0  # bytes received while waiting for the head (bounds a head that never ends)
        self.header_bytes = 0  # bytes of the header and trailer lines of the answer being parsed
        self.until_close = False  # the body has neither length nor chunks: it ends when the upstream closes
        self.status_line = False  # llhttp got past the status line of the answer being parsed
        # The answer's first bytes were "HTTP/1.": its head needs no get_http_version() call (two string
        # formattings) to be known for HTTP/1.x. Only the first head of an answer; an interim one's clears it.
        self.http1 = False
        # llhttp stopped right after a whole chunk of a chunked body: the whole chunks that come next are taken
        # without it (see _chunks). Told by its chunk callbacks; False from a chunk's size line to its end.
        self.chunk_end = False

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
        state = self.state
        if state in (_IDLE, _DONE):
            # Bytes nobody asked for: the connection can no longer be trusted to frame the next response.
            self._fail(ResponseError("upstream sent data outside a response"))
            return
        if state == _BODY and self.chunk_end:
            # A stream's usual piece: one whole chunk (an event) where the last one ended, taken without llhttp;
            # whatever does not read as whole chunks is llhttp's, from the chunk's start where it waits.
            taken = self._chunks(data)
            if taken < len(data) and not self._feed(data[taken:] if taken else data):
                return
        else:
            if state == _HEAD:
                if not self.head_bytes:  # the answer's first bytes
                    self.http1 = data.startswith(b"HTTP/1.")
                self.head_bytes += len(data)
            if not self._feed(data):
                return
            if self.state == _HEAD and self.head_bytes > _MAX_HEAD:
                self._fail(ResponseError("upstream response head too large"))
                return
        if self.body_size > _HIGH_WATER and not self.paused and self.state != _DONE:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def _feed(self, data: bytes) -> bool:
        """llhttp parses ``data``; False when that failed the answer."""
        assert self.parser is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ResponseError("upstream switched protocols, which the gateway never asks for"))
            return False
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return False
        if self.chunk_end and not data.endswith(b"\r\n"):
            # Bytes after a chunk's end that call back nothing: the start of a size line (a whole one calls
            # on_chunk_header, and only a whole one ends with CRLF). llhttp is inside it: not a chunk's start.
            self.chunk_end = False
        return True

    def _chunks(self, data: bytes) -> int:
        """How many of the first bytes of ``data`` are whole chunks, each a size in at most 8 hex digits, CRLF, that
        many bytes and CRLF, taken into the body as llhttp would take them: where llhttp waits for a chunk's size
        line, it would hand each one's bytes to on_body and wait at the next chunk's start again, nothing else
        changed. The last chunk (size 0), a size line with more (an extension), or a chunk not all there, stop it:
        what follows is llhttp's, from a chunk's start (what it says of them, errors included, as if it had read
        all of ``data``). Byte by byte: about 600 instructions a piece compiled, slice included, where feeding llhttp
        costs about 1.7 K (a buffer, a callback through Python, error checks)."""
        size_of = len(data)
        at = 0
        while True:
            i = at
            size = 0
            while i < size_of and i - at < 8:
                byte = data[i]
                if 48 <= byte <= 57:  # 0-9
                    size = size * 16 + byte - 48
                elif 97 <= byte <= 102:  # a-f
                    size = size * 16 + byte - 87
                elif 65 <= byte <= 70:  # A-F
                    size = size * 16 + byte - 55
                else:
                    break
                i += 1
            start = i + 2
            end = start + size
            if (
                size == 0  # no digit, or the last chunk (its trailers are llhttp's)
                or end + 2 > size_of
                or data[i] != 13
                or data[i + 1] != 10
                or data[end] != 13
                or data[end + 1] != 10
            ):
                return at
            self.body.append(data[start:end])
            self.body_size += size
            at = end + 2
            if at == size_of:
                return at

    def eof_received(self) -> bool:
        if self.state == _BODY and self.until_close:
            self.state = _DONE
            self.keep_alive = False
            self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if (
            self.state == _BODY and self.until_close and exc is None
        ):  # a clean close ends a body without length; a reset does not
            self.state = _DONE
        elif self.state != _DONE and self.state != _IDLE and self.error is None:
            reason = f": {exc}" if exc else ""
            self.error = ResponseError(f"upstream closed the connection before the response was complete{reason}")
        self._wake()

    # ------------------------------------------------------------ llhttp's callbacks

    def on_message_begin(self) -> None:
        if self.state != _HEAD:  # a second answer to one request
            raise self._stop(ResponseError("upstream sent data after the response ended"))
        self.headers = {}
        self.header_bytes = 0
        self.status_line = False

    def on_status(self, reason: bytes) -> None:
        self.status_line = True

    def on_header(self, name: bytes, value: bytes) -> None:
        # Past the status line (as header_bytes, now above 0, tells _parse_failed).
        size = self.header_bytes = self.header_bytes + len(name) + len(value)
        if size > _MAX_HEAD:
            raise self._stop(
                ResponseError(
                    "upstream response head too large" if self.state == _HEAD else "upstream trailer too long"
                )
            )
        if self.state == _BODY:  # a trailer: read and dropped
            return
        key = name.lower().decode("latin-1")  # a token (llhttp checked): ASCII
        text = value.rstrip(b" \t").decode("latin-1")  # llhttp drops the whitespace before a value, not after
        headers = self.headers
        if key in headers:
            text = f"{headers[key]}, {text}"
        headers[key] = text

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        self.status_line = True
        status = parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real head follows
        if not self.http1 and not parser.get_http_version().startswith("1."):
            version = parser.get_http_version()
            raise self._stop(ResponseError(f"upstream answered something that is not HTTP/1.x: HTTP/{version}"))
        headers = self.headers
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        if self.head_request:
            # No body follows, whatever the head says; keep-alive by the version and Connection alone.
            connection = headers.get("connection", "").lower()
            self.keep_alive = (
                "close" not in connection if parser.get_http_version() == "1.1" else "keep-alive" in connection
            )
            self.state = _DONE
            raise self._stop(_HeadEnds())
        self.state = _BODY
        self.until_close = (
            "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()
        )

    def on_chunk_header(self) -> None:
        self.chunk_end = False

    def on_chunk_complete(self) -> None:
        self.chunk_end = True

    def on_body(self, data: bytes) -> None:
        self.body.append(data)
        self.body_size += len(data)

    def on_message_complete(self) -> None:
        if self.state == _HEAD:
            self.headers = {}  # the end of an interim answer
            self.http1 = False  # the next head's version is llhttp's to tell
            return
        assert self.parser is not None
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()
        self.state = _DONE

    def _stop(self, exc: BaseException) -> BaseException:
        """``exc``, kept as what stopped the parser (see ``stopped``): a callback raises what this returns."""
        self.stopped = exc
        return exc

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = self.stopped if self.stopped is not None else exc.__context__
        self.stopped = None
        if isinstance(cause, _HeadEnds):
            self.parser = None  # llhttp stopped in an error state: the next request gets a new parser
            self._wake()
            return
        if isinstance(cause, HttpError):
            self._fail(cause)
        elif not self.status_line and not self.header_bytes:
            self._fail(ResponseError(f"upstream answered something that is not HTTP/1.x: {exc}"))
        else:
            self._fail(ResponseError(f"upstream broke HTTP/1.1 framing: {exc}"))

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
        reader = self.reader
        if reader is not None:
            if reader.done():  # cancelled: what arrived waits for the next read
                self.reader = self.pump = None
                return
            body = self.body
            if body and not self.paused:  # the usual piece of a stream, handed over as take() would hand it
                self.body = []
                self.body_size = 0
                piece = body[0] if len(body) == 1 else b"".join(body)
                pump = self.pump
                run = self.pump_run
                if pump is None or run is None:
                    self.reader = None
                    reader.set_result(piece)
                    return
                try:
                    taken = run(pump, piece)
                except Exception as exc:  # the reader's to raise, as if it had handled the piece itself
                    self.reader = self.pump = None
                    # A future refuses StopIteration (TypeError, here in the callback): the reader would wait on.
                    reader.set_exception(exc if not isinstance(exc, StopIteration) else RuntimeError(repr(exc)))
                    return
                if not taken:  # the pump stopped at this piece: the reader takes over
                    self.reader = self.pump = None
                    reader.set_result(None)
                    return
                if self.state != _DONE and self.error is None:
                    return  # the reader waits on; the pump takes the next piece too
            try:
                data = self.take()
            except HttpError as exc:
                self.reader = self.pump = None
                reader.set_exception(exc)
                return
            if data is not None:
                self.reader = self.pump = None
                reader.set_result(data)

    def send(self, data: bytes, head_request: bool) -> None:
        assert self.transport is not None
        if self.parser is None:
            self.parser = httptools.HttpResponseParser(self)
        self.state = _HEAD
        self.pump = None
        self.head_request = head_request
        self.head_bytes = 0
        self.header_bytes = 0
        self.until_close = False
        self.chunk_end = False
        self.status = 0
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.transport.write(data)

    def take(self) -> bytes | None:
        """The body bytes received so far and not yet read; ``b""`` once the body is complete; None: wait for more."""
        body = self.body
        if body:
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
        return None

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return self.state == _DONE and self.keep_alive and not self.closed and self.error is None


class UpstreamResponse:
    """An upstream answer whose head has arrived; read the body, then ``release()`` (or ``close()``)."""

    __slots__ = ("status", "headers", "_conn", "_pool", "_inflate", "_finished")

    def __init__(self, conn: _UpstreamConnection, pool: UpstreamHttp) -> None:
        self.status = conn.status
        self.headers = conn.headers  # lower-case names
        self._conn: _UpstreamConnection | None = conn
        self._pool = pool
        self._finished = False
        coding = conn.headers.get("content-encoding")
        if coding is None:
            self._inflate = None
            return
        coding = coding.lower()
        if coding in ("identity", ""):
            self._inflate = None
        elif coding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(47)  # gzip or zlib, told apart by the header bytes
        else:
            conn.close()
            raise ResponseError(f"upstream answered with an unsupported content-encoding {coding!r}")

    def readany(self) -> Awaitable[bytes]:
        """The next piece of the body as it arrives; ``b""`` at its end.

        A stream's relay awaits this once a piece: what it awaits is the connection's own future, which the
        connection resolves with the piece itself (no coroutine per piece), or one already resolved with it.
        """
        conn = self._conn
        if conn is None or self._finished or self._inflate is not None:
            return self._readany()
        conn.pump = None
        if not conn.body and conn.state != _DONE and conn.error is None:  # nothing yet (take() would say None)
            ready = conn.reader = conn.loop.create_future()
            return ready
        data = conn.take()
        ready = conn.reader = conn.loop.create_future()
        if data is not None:
            conn.reader = None
            ready.set_result(data)
        return ready

    def relay(self, pump: Callable[[bytes], bool]) -> Awaitable[bytes | None]:
        """:meth:`readany`, but each piece that arrives while it waits is given to ``pump`` first, in the
        connection's callback (run in the caller's context), without waking the reader: a piece the pump takes (it returns True) is its own,
        and the wait goes on; the wait ends with None when the pump stops at a piece (it returns False: what it
        made of that piece is the pump's to tell), or as readany's would, with a piece the pump never saw, the
        body's end (``b""``) or an error. A stream's relay spares a wake-up per event so."""
        conn = self._conn
        if (
            conn is None
            or self._finished
            or self._inflate is not None
            or conn.body
            or conn.state == _DONE
            or conn.error is not None
        ):
            return self.readany()
        ready = conn.reader = conn.loop.create_future()
        # In the caller's context, not the connection's: a pooled connection's callbacks run in the context of the
        # request that opened it, and what the pump logs or starts must carry the request being relayed.
        # The context's run kept, not a function calling it: one call fewer a piece.
        conn.pump_run = contextvars.copy_context().run
        conn.pump = pump
        return ready

    async def _readany(self) -> bytes:
        conn = self._conn
        if conn is None or self._finished:
            return b""
        while True:
            data = conn.take()  # what has arrived, without a coroutine when something has
            if data is None:
                waiter = conn.waiter = conn.loop.create_future()  # _wake() sets it; no coroutine per piece
                await waiter
                continue
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

    def whole(self) -> bytes | None:
        """The whole body, as :meth:`read` gives it, when it has all arrived; None: ``read()`` it.

        Spares a coroutine for the usual JSON answer, which arrives with its head."""
        conn = self._conn
        if conn is None or self._finished or self._inflate is not None or conn.state != _DONE:
            return None
        data = conn.take()  # the answer is complete: all of its body (b"" for none)
        assert data is not None
        self._finished = True
        return data

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        if self._inflate is None and conn is not None and not self._finished:
            # As readany() would give it, without a coroutine per piece: a JSON answer has usually all arrived.
            pieces: list[bytes] = []
            while True:
                data = conn.take()
                if data is None:
                    waiter = conn.waiter = conn.loop.create_future()
                    await waiter
                elif data:
                    pieces.append(data)
                else:
                    self._finished = True
                    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        parts = []
        while chunk := await self._readany():
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


async def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` names (the system resolver, as a connection would ask it)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


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
        resolve_every: float | None = None,
        resolver: Callable[[str, int], Awaitable[list[str]]] | None = None,
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
        # The request line and Host of the first (method, path)s asked for, made once: the routes, the probes.
        self._starts: dict[tuple[str, str], str] = {}
        self.max_connections = max_connections
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.in_use = 0
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first request (see _UpstreamConnection)
        self._idle: list[_UpstreamConnection] = []
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        # Spreading connections over every address of the host (see resolve_every): the addresses, when they were
        # resolved, the next one to connect to, and a generation that grows whenever the set changes.
        self.resolve_every = resolve_every
        self._resolver = resolver or _resolve
        self.addresses: tuple[str, ...] = ()
        self._resolved_at = -math.inf
        self._resolving: asyncio.Future[None] | None = None
        self._next_address = 0
        self.generation = 0

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"", tail: str = ""
    ) -> UpstreamResponse:
        """Send one request (``path`` is appended to the base URL's path) and wait for the response head.

        ``headers`` must not carry ``Host``, ``Content-Length`` or ``Transfer-Encoding``: those
        are this client's. ``tail``: more header lines, each ``Name: value`` and CRLF, written after
        ``headers`` (the gateway's own, made once per upstream). Raises :class:`ConnectError` or
        :class:`ResponseError`.
        """
        if self.closed:
            raise ConnectError("the upstream client is closed")
        if self.in_use >= self.max_connections:
            await self._wait_for_slot()
        self.in_use += 1
        conn: _UpstreamConnection | None = None
        try:
            if self.resolve_every is not None:
                await self._fresh_addresses()
            conn = self._take_idle()
            if conn is None:
                conn = await self._connect()
            start = self._starts.get((method, path))
            if start is None:
                start = f"{method} {self.prefix}{path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
                if len(self._starts) < _STARTS_KEPT:  # paths with ids in them (stored responses) are not kept
                    self._starts[(method, path)] = start
            lines = [start]
            for name, value in headers:  # a loop, not a comprehension: no frame of its own for a few headers
                lines.append(f"{name}: {value}\r\n")
            if tail:
                lines.append(tail)
            lines.append(f"Content-Length: {len(body)}\r\n\r\n" if body or method in _WITH_BODY else "\r\n")
            text = "".join(lines)
            try:
                head = text.encode()  # the usual head: no codec lookup
            except UnicodeEncodeError:  # a forwarded value that came from a client's undecodable bytes
                head = text.encode("utf-8", "surrogateescape")
            conn.send(head + body, method == "HEAD")
            while conn.status == 0:  # the head; each wait a bare future, no coroutine of its own
                if conn.error is not None:
                    raise conn.error
                if conn.closed:
                    raise ResponseError("upstream closed the connection before answering")
                waiter = conn.waiter = conn.loop.create_future()
                await waiter
            return UpstreamResponse(conn, self)
        except BaseException:
            if conn is not None:
                conn.close()
            self._free_slot()
            raise

    def _take_idle(self) -> _UpstreamConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.error is None:
                if conn.generation == self.generation:
                    return conn
                conn.close()  # opened under an address set that has changed since
        return None

    async def _fresh_addresses(self) -> None:
        """Re-resolve the host once ``resolve_every`` has passed (one lookup at a time; the others wait for it)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._resolved_at + (self.resolve_every or 0.0):
            return
        if self._resolving is not None:
            await asyncio.shield(self._resolving)
            return
        self._resolving = loop.create_future()
        try:
            found = tuple(sorted(set(await self._resolver(self.host, self.port))))
        except OSError as exc:
            found = ()
            log.warning(
                "upstream %s: cannot resolve: %s; keeping %d known address(es)", self.host, exc, len(self.addresses)
            )
        finally:
            self._resolved_at = loop.time()
            self._resolving.set_result(None)
            self._resolving = None
        if found and found != self.addresses:
            if self.addresses:
                log.info("upstream %s: addresses %s -> %s", self.host, ",".join(self.addresses), ",".join(found))
            self.addresses = found
            self.generation += 1  # idle connections of the old set close; new ones spread over the new set

    async def _connect(self) -> _UpstreamConnection:
        loop = self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _UpstreamConnection(loop),
                    self._address(),
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise ConnectError(
                f"connect to {self.host}:{self.port} timed out after {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc), exc) from None
        conn.generation = self.generation
        return conn

    def _address(self) -> str:
        """Where the next connection goes: the host's addresses in turn when they are resolved here, else the host."""
        addresses = self.addresses
        if not addresses:
            return self.host
        self._next_address = (self._next_address + 1) % len(addresses)
        return addresses[self._next_address]

    def _release(self, conn: _UpstreamConnection) -> None:
        self._free_slot()
        if conn.reusable and not self.closed and conn.generation == self.generation:
            conn.state = _IDLE
            loop = conn.loop
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


class TracedHttp(UpstreamHttp):
    """An :class:`UpstreamHttp` that sends the current trace context with every request (tracing on only).

    ``inject`` rewrites a request's headers: the W3C ``traceparent`` and ``tracestate`` of the gateway's
    span of the attempt in place of any a client sent (tollgate/accounting/tracing.py). The plain client
    is used when tracing is off, so that costs nothing per request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        inject: Callable[[list[tuple[str, str]]], list[tuple[str, str]]],
        max_connections: int = 256,
        keepalive: float = 30.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        resolve_every: float | None = None,
        resolver: Callable[[str, int], Awaitable[list[str]]] | None = None,
    ) -> None:
        # Each option by name, not as **options: compiled, a ** handed on to a compiled method arrives as one
        # positional argument (mypyc/mypyc#1162).
        super().__init__(
            base_url,
            max_connections=max_connections,
            keepalive=keepalive,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
            resolve_every=resolve_every,
            resolver=resolver,
        )
        self._inject = inject

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"", tail: str = ""
    ) -> UpstreamResponse:
        assert not tail, "a traced request's headers are all in its list, where the trace context is written"
        return await super().request(method, path, self._inject(headers), body)
