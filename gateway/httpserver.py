"""The public listener's HTTP/1.1 server: one asyncio protocol per connection, a handler task per request.

Why not aiohttp's server: on the full-policy benchmark its server side (URL
objects, request and response wrappers, the per-connection message queue and
payload streams, header multidicts on the way out) cost more CPU per request
than the whole policy pipeline. The public listener needs little of it: a
few fixed paths, JSON bodies of bounded size, a JSON answer or an SSE
stream. The admin listener stays an aiohttp application.

What it does, per connection:

* **Parsing** of the request line and headers, strictly: a method token, an
  origin-form target, HTTP/1.0 or 1.1, header names that are tokens, no
  whitespace before the colon, no obsolete line folding, no control
  characters in values. A head larger than ``max_head`` is answered 431.
* **Framing**: ``Content-Length`` (digits only, one value) or
  ``Transfer-Encoding: chunked`` (decoded; chunk extensions and trailers are
  read and dropped). Both at once, another transfer coding or a bad length is
  refused with 400 and the connection closed: no request smuggling through a
  framing disagreement with a proxy in front.
* **Body on demand**: reading pauses after each head until the handler asks
  for the body (``Expect: 100-continue`` is answered then), so a body the
  guard refuses by its length is never buffered. A connection whose body was
  not read to the end is closed after the answer.
* **One request at a time**, pipelined requests answered in order; a client
  that disconnects cancels its handler (which cancels the upstream request).
* **Answers**: the handler returns a :class:`Response` (``gateway.http``
  makes the JSON ones), written in one
  ``write`` with ``Content-Length`` and ``Date``; or a :class:`StreamResponse`
  it has written itself, chunked (or close-delimited for HTTP/1.0), with
  write flow control.
* **Keep-alive** for ``keepalive_timeout`` seconds of silence; HTTP/1.0 and
  ``Connection: close`` are honoured.
* **Shutdown**: :meth:`HttpServer.shutdown` stops listening, closes idle
  connections, lets in-flight requests and streams finish for up to the
  grace period (their answers say ``Connection: close``), then cancels what
  is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from .errors import BadRequest
from .http import Response, error_body, internal_error_answer, new_request_id

__all__ = ["HttpServer", "Request", "Response", "StreamResponse", "Handler"]

log = logging.getLogger("tollgate.httpserver")

KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection is kept (aiohttp's default too)
MAX_HEADERS = 512  # header lines in one request (a size cap alone would let 16,000 tiny ones through)
LINGER_SECONDS = 5.0  # how long the unread rest of a refused request's body is read and dropped
_SWEEP_EVERY = 1.0
_PIPELINE_HIGH_WATER = 256 * 1024  # bytes read ahead of the request being answered before reading pauses
_MAX_CHUNK_LINE = 4096

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[!-~]*|\*) HTTP/1\.([01])")
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # CR and LF are checked by counting them
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}


class _HeadError(Exception):
    """A request the server answers itself, then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Body:
    """A request body as it arrives: ``read(n)`` returns up to ``n`` bytes, ``b""`` at its end."""

    __slots__ = ("connection",)

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    async def read(self, n: int = -1) -> bytes:
        return await self.connection.read_body(n)


class Request:
    """What the handler sees of one request; the attribute names follow aiohttp's ``BaseRequest``."""

    __slots__ = ("method", "path", "query_string", "version", "headers", "raw_headers", "transport", "content_length",
                 "chunked", "keep_alive", "content", "_query")

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        version: int,
        headers: CIMultiDictProxy[str],
        raw_headers: tuple[tuple[bytes, bytes], ...],
        transport: asyncio.Transport,
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        content: Body,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.version = version  # the minor version: 0 or 1
        self.headers = headers
        self.raw_headers = raw_headers
        self.transport = transport
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.content = content
        self._query: MultiDictProxy[str] | None = None

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            self._query = MultiDictProxy(MultiDict(parse_qsl(self.query_string, keep_blank_values=True)))
        return self._query

    @property
    def host(self) -> str | None:
        return self.headers.get("Host")

    @property
    def remote(self) -> str | None:
        peer = self.transport.get_extra_info("peername")
        return str(peer[0]) if peer else None

    async def read(self) -> bytes:
        """The whole body."""
        return await self.content.read()


class StreamResponse:
    """An answer written piece by piece (SSE): ``prepare``, ``write`` as often as needed, ``write_eof``."""

    __slots__ = ("status", "headers", "_conn", "_chunked", "prepared", "eof_sent")

    def __init__(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self._conn: _Connection | None = None
        self._chunked = True
        self.prepared = False
        self.eof_sent = False

    async def prepare(self, request: Request) -> None:
        conn = request.content.connection
        if self.prepared:
            return
        self._conn = conn
        self._chunked = request.version == 1
        framing = ("Transfer-Encoding", "chunked") if self._chunked else None
        conn.write_head(self.status, self.headers, framing, streaming=True)
        self.prepared = True

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or self.eof_sent:
            raise RuntimeError("write() before prepare() or after write_eof()")
        if not data:
            return
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        await conn.drain()

    async def write_eof(self) -> None:
        conn = self._conn
        if conn is None or self.eof_sent:
            return
        self.eof_sent = True
        if self._chunked:
            conn.write(b"0\r\n\r\n")
        await conn.drain()


Handler = Callable[[Request], Awaitable[Any]]


class _Date:
    """The Date header's value, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode()
        return cls.value


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each in turn, writes the answers."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._request: Request | None = None  # the request being answered
        self.task: asyncio.Task[None] | None = None
        self.last_seen = 0.0
        self.closing = False  # answer the current request with Connection: close, then close
        self._reading_paused = False
        self._writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The current request's body: framing state, arrived bytes, whether it is complete, a waiting reader.
        self._body_left = 0  # Content-Length bytes still to come, or the rest of the current chunk
        self._chunk_state = 0  # 0: not chunked; 1: chunk size line; 2: chunk data; 3: CRLF after data; 4: trailers
        self._body_parts: list[bytes] = []
        self._body_done = True
        self._body_error: str | None = None
        self._body_wanted = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._continue = False  # a 100 Continue is owed when the body is first read
        self._lingering = False  # answered: the rest of the body is read and dropped before closing

    # -- transport events ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_seen = self._loop.time()
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self.last_seen = self._loop.time()
        if self._request is None:
            self._next_request()
        elif not self._body_done:
            self._take_body()
        elif len(self._buf) > _PIPELINE_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True  # pipelined requests far ahead of the answers: wait
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        # A client that stops sending has gone, as far as a request/response exchange is concerned: closing
        # (connection_lost) cancels its handler, as a disconnect does. Nothing waits for the answer.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self.closing = True
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: stop working for it (the upstream request is cancelled too)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client closed the connection"))
            drain.exception()  # retrieved here: the waiting handler is being cancelled and may never look

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- requests --------------------------------------------------------------
    def _next_request(self) -> None:
        buf = self._buf
        if not buf:
            return
        end = buf.find(b"\r\n\r\n")
        limit = self._server.max_head
        if end < 0:
            if len(buf) > limit:
                self._refuse(431, f"request head exceeds {limit} bytes")
            elif buf.startswith(b"\r\n"):  # a stray empty line between requests is allowed (RFC 9112 2.2)
                del buf[:2]
                self._next_request()
            return
        if end > limit:
            self._refuse(431, f"request head exceeds {limit} bytes")
            return
        head = bytes(buf[:end])
        del buf[: end + 4]
        try:
            request = self._parse(head)
        except _HeadError as exc:
            self._refuse(exc.status, exc.message)
            return
        self._request = request
        self.task = self._loop.create_task(self._serve(request))

    def _parse(self, head: bytes) -> Request:
        lines = head.split(b"\r\n")
        breaks = len(lines) - 1
        if _CONTROL.search(head) is not None or head.count(b"\r") != breaks or head.count(b"\n") != breaks:
            raise _HeadError(400, "control characters in the request head")
        if lines[0] == b"" and len(lines) > 1:
            lines = lines[1:]  # a stray empty line before the request line
        if len(lines) > MAX_HEADERS + 1:
            raise _HeadError(431, f"more than {MAX_HEADERS} request headers")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            raise _HeadError(400, "malformed request line")
        method = match.group(1).decode("ascii")
        target = match.group(2).decode("ascii")
        version = int(match.group(3))
        raw = []
        pairs = []
        length: int | None = None
        lengths = 0
        chunked = False
        transfer = False
        connection = ""
        expect = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            # A name is a token: no whitespace before the colon, no obsolete folding (a line opening with SP or HT).
            if not colon or not name or name.translate(None, _TOKEN_CHARS):
                raise _HeadError(400, "malformed header line")
            value = value.strip(b" \t")
            raw.append((name, value))
            text_name = name.decode("ascii")
            text_value = value.decode("utf-8", "surrogateescape")
            pairs.append((text_name, text_value))
            lower = text_name.lower()
            if lower == "content-length":
                lengths += 1
                if not value.isdigit() or len(value) > 18:
                    raise _HeadError(400, "invalid Content-Length")
                length = int(value)
            elif lower == "transfer-encoding":
                transfer = True
                chunked = text_value.lower() == "chunked"
            elif lower == "connection":
                connection = text_value.lower()
            elif lower == "expect":
                expect = text_value.lower() == "100-continue"
        if transfer:
            if not chunked:
                raise _HeadError(400, "unsupported Transfer-Encoding (only chunked is accepted)")
            if lengths or version == 0:
                raise _HeadError(400, "Transfer-Encoding with Content-Length or over HTTP/1.0")
        if lengths > 1:
            raise _HeadError(400, "more than one Content-Length")
        if version == 1:
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        path, _, query = target.partition("?")
        # The body's framing, read as it arrives once the handler asks for it.
        self._body_parts = []
        self._body_error = None
        self._body_wanted = False
        if chunked:
            self._chunk_state, self._body_left, self._body_done = 1, 0, False
        elif length:
            self._chunk_state, self._body_left, self._body_done = 0, length, False
        else:
            self._chunk_state, self._body_left, self._body_done = 0, 0, True
        self._continue = expect and not self._body_done and version == 1
        assert self.transport is not None
        return Request(method, path, query, version, CIMultiDictProxy(CIMultiDict(pairs)), tuple(raw), self.transport,
                       length, chunked, keep_alive, Body(self))

    async def _serve(self, request: Request) -> None:
        server = self._server
        try:
            try:
                answer = await server.handler(request)
            except Exception:  # a bug in the handler: JSON with a request id, never a traceback
                request_id = new_request_id()
                log.exception("unexpected error on request %s", request_id)
                answer = internal_error_answer(request_id)
            if isinstance(answer, StreamResponse):
                if not answer.prepared:
                    await answer.prepare(request)
                await answer.write_eof()
            else:
                self.write_head(answer.status, answer.headers, None, body=b"" if request.method == "HEAD" else answer.body,
                                length=len(answer.body))
        except asyncio.CancelledError:
            self.closing = True
            return
        except (ConnectionResetError, BrokenPipeError):
            self.closing = True
        except Exception:  # an answer that cannot be written (not a response, say): nothing more on this connection
            log.exception("could not write the answer to %s %s", request.method, request.path)
            self.closing = True
            if self.transport is not None:
                self.transport.close()
        finally:
            self.task = None
        self._finish(request)

    def _finish(self, request: Request) -> None:
        """After an answer: close, or go on with the next request already buffered."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self._body_done and not self._body_error:
            self._linger()
            return
        if self.closing or not request.keep_alive or self._server.stopping:
            transport.close()
            return
        self._request = None
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._next_request()

    def _linger(self) -> None:
        """Answered before its body was read (413, 401...): read the rest and drop it, then close.

        Closing with unread bytes would reset the connection, and the client,
        still sending, might lose the answer. Reading goes on until the body's
        end, at most ``LINGER_SECONDS``; the connection is not reused.
        """
        self.closing = True
        self._lingering = True
        self._body_wanted = True
        self._body_parts = []
        self._loop.call_later(LINGER_SECONDS, self._close)
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._take_body()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the handler never sees (malformed, too large) and close."""
        self.closing = True
        body = error_body(message, "invalid_request_error", "invalid_request")
        with contextlib.suppress(ConnectionResetError):  # the client is gone already: nothing to tell it
            self.write_head(status, {"Content-Type": "application/json"}, None, body=body, length=len(body))
        if self.transport is not None:
            self.transport.close()

    # -- the body ----------------------------------------------------------------
    async def read_body(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body (all of it for ``n < 0``); ``b""`` at its end."""
        if not self._body_wanted:
            self._body_wanted = True
            if self._continue:
                self._continue = False
                if not self._buf:  # the client is waiting for it before it sends the body
                    self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._take_body()
        while True:
            if self._body_error is not None:
                self.closing = True
                raise BadRequest(f"the request body could not be read: {self._body_error}", code="invalid_body")
            parts = self._body_parts
            if parts and (n >= 0 or self._body_done):
                data = b"".join(parts) if len(parts) > 1 else parts[0]
                if 0 <= n < len(data):
                    self._body_parts = [data[n:]]
                    return data[:n]
                self._body_parts = []
                return data
            if self._body_done:
                return b""
            if self._reading_paused:
                self._reading_paused = False
                assert self.transport is not None
                self.transport.resume_reading()
            waiter = self._body_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._body_waiter = None

    def _take_body(self) -> None:
        """Moves the current request's body bytes from the buffer to the body; pauses reading when ahead of the reader."""
        if not self._body_wanted:
            if not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()  # the handler has not asked for the body (yet): read nothing more
            return
        buf = self._buf
        try:
            if self._chunk_state == 0:
                take = min(len(buf), self._body_left)
                if take:
                    self._body_parts.append(bytes(buf[:take]))
                    del buf[:take]
                    self._body_left -= take
                self._body_done = self._body_left == 0
            else:
                self._take_chunks(buf)
        except _HeadError as exc:
            self._body_error = exc.message
        if self._lingering:
            self._body_parts = []
            buf.clear()  # nothing after the body is served on this connection
            if self._body_done or self._body_error is not None:
                self._close()
            return
        if len(buf) > _PIPELINE_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def _take_chunks(self, buf: bytearray) -> None:
        while True:
            state = self._chunk_state
            if state == 1:  # the size line: hex digits, optionally ";extensions"
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise _HeadError(400, "chunk size line too long")
                    return
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                if _HEX.fullmatch(size) is None:
                    raise _HeadError(400, "malformed chunk size")
                self._body_left = int(size, 16)
                self._chunk_state = 2 if self._body_left else 4
            elif state == 2:
                take = min(len(buf), self._body_left)
                if not take:
                    return
                self._body_parts.append(bytes(buf[:take]))
                del buf[:take]
                self._body_left -= take
                if self._body_left == 0:
                    self._chunk_state = 3
            elif state == 3:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise _HeadError(400, "chunk data not followed by CRLF")
                del buf[:2]
                self._chunk_state = 1
            else:  # trailers, dropped, up to the empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > self._server.max_head:
                        raise _HeadError(400, "trailers too long")
                    return
                del buf[: end + 2]
                if end == 0:
                    self._chunk_state = 0
                    self._body_done = True
                    return

    def _wake_reader(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- writing ---------------------------------------------------------------------
    def write_head(
        self,
        status: int,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        framing: tuple[str, str] | None,
        *,
        body: bytes = b"",
        length: int | None = None,
        streaming: bool = False,
    ) -> None:
        """The status line and headers (and a complete body), in one write."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
        for name, value in items:
            lower = name.lower()
            if lower in _FRAMING_HEADERS:
                continue  # the server frames the answer itself
            lines.append(f"{name}: {value}\r\n")
        if framing is not None:
            lines.append(f"{framing[0]}: {framing[1]}\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        request = self._request
        if (self.closing or self._server.stopping or not self._body_done or (streaming and framing is None)
                or (request is not None and not request.keep_alive)):
            lines.append("Connection: close\r\n")
            self.closing = True
        elif request is not None and request.version == 0:
            lines.append("Connection: keep-alive\r\n")  # an HTTP/1.0 client that asked for it closes without it
        text = "".join(lines)
        # Each line ends in its own CRLF; a CR, LF or NUL inside a name or value would split the answer.
        count = len(lines)
        if text.count("\r") != count or text.count("\n") != count or text.count("\r\n") != count or "\x00" in text:
            log.error("refusing to send a response header with CR, LF or NUL in it (status %d)", status)
            self.closing = True
            body = error_body("the gateway built an invalid response header", "api_error", "internal_error")
            text = (f"HTTP/1.1 500 {_REASONS[500]}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n")
        head = text.encode("utf-8", "surrogateescape")
        self.write(head + b"Date: " + _Date.now() + b"\r\n\r\n" + body)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if not self._writing_paused:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._drain is None:
            self._drain = self._loop.create_future()
        await asyncio.shield(self._drain)

    def close_if_idle(self) -> bool:
        if self.task is None and self.transport is not None:
            self.transport.close()
            return True
        return False


_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "date"})


class HttpServer:
    """Listens on one address; ``handler`` answers each request."""

    def __init__(self, handler: Handler, *, max_head: int = 64 * 1024, keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> None:
        self.handler = handler
        self.max_head = max_head
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 2048) -> int:
        """Binds and listens; returns the bound port."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_port=reuse_port or None, backlog=backlog
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = self.loop.call_later(_SWEEP_EVERY, self._sweep)
        return self.port

    def _sweep(self) -> None:
        """Closes keep-alive connections idle past the timeout (a half-sent head counts as idle)."""
        deadline = self.loop.time() - self.keepalive_timeout
        for conn in list(self.connections):
            if conn.task is None and conn.last_seen < deadline:
                conn.close_if_idle()
        if not self.stopping:
            self._sweeper = self.loop.call_later(_SWEEP_EVERY, self._sweep)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish for ``grace`` seconds, cancel the rest."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.closing = True
            conn.close_if_idle()
        tasks = {conn.task for conn in self.connections if conn.task is not None}
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d request(s) still running after the %.0fs grace period were cancelled", len(pending), grace)
                await asyncio.wait(pending, timeout=1.0)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
