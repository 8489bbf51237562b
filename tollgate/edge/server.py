"""The public listener's HTTP/1.1 server: llhttp (through httptools) parses, one asyncio protocol and one task per connection.

Why not aiohttp's server: on the full-policy benchmark its server side (URL
objects, request and response wrappers, the per-connection message queue and
payload streams, header multidicts on the way out) cost more CPU per request
than the whole policy pipeline. The public listener needs little of it: a
few fixed paths, JSON bodies of bounded size, a JSON answer or an SSE
stream. The admin listener stays an aiohttp application. What a handler is
given and streams with (Request, its Body, StreamedAnswer) is in
``messages.py``; complete answers are made in ``answers.py``.

What it does, per connection:

* **Parsing** by llhttp, the parser Node.js uses, in its strict mode: the
  request line, header names and values, ``Content-Length`` and chunked
  framing (CL and TE together, two lengths, a signed length, bare LF or CR,
  whitespace before a colon, obsolete line folding, control characters, a
  malformed chunk size are all refused by it). On top of it, the policies
  llhttp leaves to the server: HTTP/1.0 and 1.1 only, an origin-form target
  (a path, or ``*``), exactly one ``Host`` on HTTP/1.1 and at most one on
  1.0 (RFC 9112 3.2), one ``Transfer-Encoding`` line whose only coding is
  ``chunked`` (another coding before it: 501), none over HTTP/1.0, a head
  of at most ``max_head`` bytes and ``MAX_HEADERS`` lines (431). A request
  refused here is answered with a JSON error and the connection closed: no
  request smuggling through a framing disagreement with a proxy in front.
* **Time and room**: a head must arrive within ``head_timeout`` seconds of
  its first byte (or of the connection's opening), else 408 and close (a
  connection that sent nothing is just closed); at most ``max_connections``
  connections are open, the next ones get 503 and are closed. Every refusal
  is reported to ``on_refused`` with one of :data:`REFUSALS`.
* **Body on demand**: llhttp hands over what each read brings, but once a
  head is parsed, the bytes that follow are held unparsed until the handler
  asks for the body (``Expect: 100-continue`` is answered then); past
  ``_HOLD_HIGH_WATER`` held bytes reading pauses. So a body the guard
  refuses by its length is never buffered. A connection whose body was not
  read to the end is drained for up to ``LINGER_SECONDS`` (the client gets
  its answer instead of a reset), then closed.
* **One request at a time**, pipelined requests answered in order (a
  request parsed ahead waits in a queue, and holds what follows it); a
  client that disconnects cancels its handler (which cancels the upstream
  request).
* **Answers**: the handler returns a :class:`~tollgate.edge.answers.Response`,
  written in one ``write`` with ``Content-Length`` and ``Date``; or a
  :class:`~tollgate.edge.messages.StreamedAnswer` it has written itself, chunked (or
  close-delimited for HTTP/1.0), with write flow control. No ``Server``
  header; a header with CR, LF or NUL is never written (a JSON 500 instead).
* **Keep-alive** for ``keepalive_timeout`` seconds of silence; HTTP/1.0 and
  ``Connection: close`` are honoured. A request asking for ``Upgrade`` is
  served as plain HTTP/1.1, and is the last on its connection.
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
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import httptools
from multidict import CIMultiDict, CIMultiDictProxy, istr

from tollgate.edge.answers import error_body, internal_error_answer, new_request_id
from tollgate.edge.messages import Body, Handler, Request, StreamedAnswer

__all__ = ["REFUSALS", "HttpServer"]

log = logging.getLogger("tollgate.httpserver")

KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection is kept (aiohttp's default too)
HEAD_TIMEOUT = 10.0  # seconds from a head's first byte (or the connection's opening) to its end
MAX_CONNECTIONS = 10_000  # open connections per process; past it new ones are answered 503 and closed
MAX_HEADERS: Final = 512  # header lines in one request (a size cap alone would let 16,000 tiny ones through)
LINGER_SECONDS = 5.0  # how long the unread rest of a refused request's body is read and dropped
REFUSALS = ("bad_request", "head_too_large", "head_timeout", "connection_limit")
"""Why the server answered a connection itself, without a handler: the reasons given to ``on_refused``."""

_HOLD_HIGH_WATER = 256 * 1024  # bytes held unparsed (a body not asked for, pipelined requests) before reading pauses
_REQUEST_LINE_ROOM = 16  # what a request line adds to its target: method, spaces, version, CRLF (about)
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_STATUS_LINES: Final = {status: f"HTTP/1.1 {status} {phrase}\r\n" for status, phrase in _REASONS.items()}
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "date"})
_BEFORE_KEPT: Final = 8192  # bytes of header values a connection keeps from its last head (see _request)
_PREFIXES_KEPT: Final = 256  # answer header names whose prefix and last line are kept (the gateway writes a few dozen)
# The header classes of every request, read from native statics rather than the module's dictionary (compiled).
_HEADERS: Final = CIMultiDict
_HEADERS_VIEW: Final = CIMultiDictProxy
_ISTR: Final = istr


def _head_bytes(url: bytes, raw: list[tuple[bytes, bytes]]) -> int:
    """The size of a head from its parts as llhttp reported them (the request line's syntax estimated)."""
    return _REQUEST_LINE_ROOM + len(url) + sum(len(name) + len(value) + 4 for name, value in raw) + 2


class _HeaderLine:
    """What the server knows of an answer header's name (``HttpServer.header_lines``): its line's prefix, and the
    last line written with it, with that line's value."""

    __slots__ = ("prefix", "value", "line")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # "Name: ", or "" for a framing header, which the server writes itself
        self.value = "\r"  # no line written yet: a value no line can have
        self.line = ""


def _header_line(known_lines: dict[str, _HeaderLine], name: str, value: str) -> str | None:
    """An answer header's line; "" for a framing header, which the server writes itself; None for a header that
    cannot be written.

    A CR, LF or NUL inside a name or value would split the answer: each value is looked at (three memchr scans),
    a name once, when its line prefix is made and kept in ``known_lines``. The lines the server makes itself hold
    none. A value equal to the one written last time under its name (a content type, a model's name) was looked
    at then: its line is the one made then.
    """
    known = known_lines.get(name)
    if known is None:
        if "\r" in name or "\n" in name or "\x00" in name:
            return None
        known = _HeaderLine("" if name.lower() in _FRAMING_HEADERS else f"{name}: ")
        if len(known_lines) < _PREFIXES_KEPT:
            known_lines[name] = known
    elif value == known.value:
        return known.line
    prefix = known.prefix
    if not prefix:
        return ""
    if "\r" in value or "\n" in value or "\x00" in value:
        return None
    line = known.line = f"{prefix}{value}\r\n"
    known.value = value
    return line


def _rstrip(value: bytes) -> bytes:
    """A header value without the whitespace after it (llhttp drops the whitespace before it, not after)."""
    if value and (value[-1] == 32 or value[-1] == 9):  # " " or "\t": rare, so the method is called only then
        return value.rstrip(b" \t")
    return value


class _Refusal(Exception):
    """A request (or connection) the server answers itself, then closes."""

    def __init__(self, status: int, message: str, reason: str = "bad_request", code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.code = code


_NOW: Final = time.time  # read from a native static, not the time module's attribute (compiled)


class _Date:
    """The Date header's line and the blank line after it, formatted once a second (one instance, :data:`_DATE`:
    its slots are read faster than a class's attributes)."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def line(self) -> bytes:
        second = int(_NOW())
        if second != self.second:
            self.second = second
            self.value = (
                b"Date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(second)).encode() + b"\r\n\r\n"
            )
        return self.value


_DATE: Final = _Date()


class _Connection(asyncio.Protocol):
    """One client connection: feeds llhttp, runs the handler for each request in turn, writes the answers."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self.loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # The head llhttp is parsing: its target, header lines, size, and since when it is awaited.
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_received = 0  # bytes of the head received so far, as far as the reads up to the last one show
        self._head_fresh = False  # the head began during the read being parsed
        self._head_offset = 0  # and this many bytes of that read came before it, as far as they were reported
        self._heads_in_read = 0  # heads completed during the read being parsed
        self._read_size = 0  # bytes of the read being parsed
        self._read_start: bytes | None = None  # the read being parsed, when it began with a request's first byte
        self._valid_host = ""  # the last Host value found valid
        # The header lines of the head before, as llhttp reported them and as text (see _request).
        self._before_raw: list[tuple[bytes, bytes]] = []
        self._before: list[tuple[str, str]] = []
        self._in_head = False  # the head's first byte has arrived, not yet its end
        self._head_began: float | None = None  # waiting for a head since then (None: serving, or idle between requests)
        self._refusal: _Refusal | None = None  # raised by a parser callback
        # Requests: the one whose body is arriving, the one being answered, those parsed ahead of their turn.
        self._parsing: Request | None = None
        self._serving: Request | None = None
        self._queue: deque[Request | _Refusal] = deque()
        self._held = bytearray()  # bytes not given to llhttp yet (see _holding)
        self.task: asyncio.Task[None] | None = None  # serves the connection's requests in turn (see _serve)
        self._next: asyncio.Future[None] | None = None  # the task waits on it for the next request
        self.idle_since = 0.0
        self.closing = False  # answer the current request with Connection: close, then close
        self._done_reading = False  # no request after this point will be served: what arrives is dropped
        self._lingering = False  # answered before its body was read: the rest is read and dropped, then close
        self._reading_paused = False
        self.writing_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.remote: str | None = None  # the peer's address: asked once (uvloop asks the kernel on every call)

    # -- transport events ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses
        server = self._server
        if len(server.connections) >= server.max_connections:
            self._refuse(
                _Refusal(503, "too many open connections; retry later", "connection_limit", "too_many_connections")
            )
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else None
        self._head_began = self.idle_since = self.loop.time()
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return
        if self._held or self._holding():
            self._held += data
            if len(self._held) > _HOLD_HIGH_WATER and not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()
            return
        self._feed(data)

    def eof_received(self) -> bool:
        # A client that stops sending has gone, as far as a request/response exchange is concerned: closing
        # (connection_lost) cancels its handler, as a disconnect does. Nothing waits for the answer.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self.closing = True
        self._done_reading = True
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: stop working for it (the upstream request is cancelled too)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client closed the connection"))
            drain.exception()  # retrieved here: the waiting handler is being cancelled and may never look

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- feeding llhttp ----------------------------------------------------------
    def _holding(self) -> bool:
        """Whether arriving bytes wait unparsed: a request parsed ahead waits its turn, or a body nobody asked for yet."""
        if self._queue:
            return True
        parsing = self._parsing
        return parsing is not None and not parsing.content.wanted and not self._lingering

    def _release(self) -> None:
        """Give llhttp what was held, and read again, once nothing holds it any more."""
        if (self._held or self._reading_paused) and not self._holding():
            held, self._held = self._held, bytearray()
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            if held and not self._done_reading:
                self._feed(bytes(held))

    def _feed(self, data: bytes) -> None:
        self._read_size = len(data)
        # Nothing of a request (head or body) left from the reads before: this one begins with a request line.
        self._read_start = data if not self._in_head and self._parsing is None else None
        self._head_fresh = False
        self._head_offset = self._heads_in_read = 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the request that asked for it is served as plain HTTP/1.1, and is the last one (see on_headers_complete)
        except httptools.HttpParserError as exc:
            self._read_start = None
            self._parse_failed(exc)
            return
        self._read_start = None  # not kept with the read (it may be a large body's)
        if self._in_head:
            # A head still incomplete after this read: llhttp reports a header line only once it has ended, so its
            # size is counted by the bytes that arrived, and one endless line is refused as it grows.
            if not self._head_fresh:
                self._head_received += len(data)  # the whole read belongs to it
            elif self._heads_in_read:  # other requests came first in this read: count what was reported (errs low)
                self._head_received = _head_bytes(self._url, self._raw)
            else:  # the bytes of this read after a previous request's body (errs high by a chunked body's framing)
                self._head_received = len(data) - self._head_offset
            if self._head_received > self._server.max_head or len(self._raw) > MAX_HEADERS:
                self._refuse(self._too_large())

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        refusal, self._refusal = self._refusal, None
        if self._done_reading:
            return  # bytes after the last request this connection serves (llhttp: "data after Connection: close")
        if refusal is None and isinstance(exc, httptools.HttpParserCallbackError):
            log.error("HTTP parser callback failed", exc_info=exc.__context__ or exc)
        parsing = self._parsing
        if refusal is None and parsing is not None:
            # The body of a request already handed over is malformed: its reader is told, nothing after it is read.
            self._parsing = None
            self._done_reading = self.closing = True
            parsing.content.fail(str(exc) or "malformed body")
            if self._lingering:
                self._close()
            return
        self._refuse(refusal or _Refusal(400, f"malformed request: {exc}"))

    def _too_large(self) -> _Refusal:
        if len(self._raw) > MAX_HEADERS:
            return _Refusal(431, f"more than {MAX_HEADERS} request headers", "head_too_large")
        return _Refusal(431, f"request head exceeds {self._server.max_head} bytes", "head_too_large")

    # -- llhttp's callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_fresh = True
        self._head_received = 0
        if self._head_began is None:
            self._head_began = self.loop.time()

    def on_url(self, url: bytes) -> None:
        # Nearly always the whole target at once: kept as it came, without a concatenation
        self._url = self._url + url if self._url else url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._raw.append((name, value))
        else:  # a trailer of a chunked body: read and dropped
            self._head_offset += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_in_read += 1
        self._head_began = None
        try:
            request = self._request()
        except _Refusal as refusal:
            self._refusal = refusal
            raise
        if not request.content.done:
            self._parsing = request
        if self._serving is None and not self._queue:
            self._start(request)
        else:
            self._queue.append(request)

    def on_body(self, data: bytes) -> None:
        self._head_offset += len(data)
        parsing = self._parsing
        if parsing is not None and not self._lingering:
            parsing.content.feed(data)

    def on_message_complete(self) -> None:
        parsing = self._parsing
        if parsing is not None:
            self._parsing = None
            parsing.content.end()
        if not self._parser.should_keep_alive():
            self._done_reading = True
        if self._lingering:
            self._done_reading = True
            self._close()

    def _request(self) -> Request:
        """The request of the head llhttp has just parsed, once the server's own policies accept it."""
        parser = self._parser
        url, raw = self._url, self._raw
        method = parser.get_method()
        minor = self._minor_version(len(method) + 1 + len(url))
        # A head that came whole in one read no larger than the cap is within the cap; another one is counted.
        limit = self._server.max_head
        if len(raw) > MAX_HEADERS or (
            (not self._head_fresh or self._read_size > limit) and _head_bytes(url, raw) > limit
        ):
            raise self._too_large()
        self._url, self._raw = b"", []
        if url[:1] != b"/" and url != b"*":
            raise _Refusal(400, "the request target must be a path (origin form), not an absolute URL or an authority")
        # llhttp drops the whitespace before a value, not after it.
        # A keep-alive client sends the same headers in the same order on every request, most with the same values:
        # each line is compared with the one at its place in the connection's head before, and what was made of
        # that one taken again: the whole (name, value) pair when both are the same, else the name's text (the
        # multidict's own istr, which it would otherwise make per name and request, and whose hash the pipeline's
        # lookups then compute once).
        before_raw, before = self._before_raw, self._before
        known = len(before_raw)
        decoded: list[tuple[str, str]] = []
        size = 0  # of the values
        try:  # names are tokens (ASCII, llhttp checked them); values are nearly always UTF-8: no codec lookup
            for i, line in enumerate(raw):
                n, v = line
                size += len(v)
                if i < known:
                    was = before_raw[i]
                    if was[0] == n:
                        if was[1] == v:
                            decoded.append(before[i])
                            continue
                        text = before[i][0]
                    else:
                        text = _ISTR(n.decode())
                else:
                    text = _ISTR(n.decode())
                decoded.append((text, _rstrip(v).decode()))
        except UnicodeDecodeError:
            decoded = [(n.decode("latin-1"), _rstrip(v).decode("utf-8", "surrogateescape")) for n, v in raw]
        if size <= _BEFORE_KEPT:
            self._before_raw, self._before = raw, decoded
        elif before_raw:  # an idle connection does not hold a large head
            self._before_raw, self._before = [], []
        headers: CIMultiDict[str] = _HEADERS(decoded)
        # The framing headers' values, found in one walk over the names (as headers.getall / headers.get would)
        hosts: list[str] = []
        codings: list[str] = []
        declared: str | None = None
        expected: str | None = None
        upgrade = False  # an Upgrade header: llhttp's upgrade flag needs one (or the CONNECT method)
        for name, value in decoded:
            size = len(name)
            if size == 4:
                if name == "Host" or name.lower() == "host":
                    hosts.append(value)
            elif size == 14:
                if declared is None and (name == "Content-Length" or name.lower() == "content-length"):
                    declared = value
            elif size == 17:
                if name == "Transfer-Encoding" or name.lower() == "transfer-encoding":
                    codings.append(value)
            elif size == 6 and expected is None and name.lower() == "expect":
                expected = value
            elif size == 7 and name.lower() == "upgrade":
                upgrade = True
        if len(hosts) > 1 or (minor == 1 and not hosts):
            raise _Refusal(
                400, "an HTTP/1.1 request carries exactly one Host header" if minor else "more than one Host header"
            )
        if hosts and hosts[0] != self._valid_host:  # a keep-alive client names the same host each time
            if _HOST.fullmatch(hosts[0]) is None:
                raise _Refusal(400, "the Host header is not a valid host[:port]")
            self._valid_host = hosts[0]
        length: int | None = None
        chunked = False
        if codings:
            if len(codings) > 1 or minor == 0:
                raise _Refusal(400, "Transfer-Encoding over HTTP/1.0 or on more than one line")
            coding = codings[0].lower().strip()
            if coding != "chunked":
                # llhttp calls us before it refuses a list that does not end in chunked (no length then: 400).
                if coding.rpartition(",")[2].strip() != "chunked":
                    raise _Refusal(400, "Transfer-Encoding must end in chunked")
                raise _Refusal(
                    501,
                    "unsupported Transfer-Encoding (only chunked is accepted)",
                    code="unsupported_transfer_encoding",
                )
            chunked = True
        elif declared is not None:  # llhttp has checked it: digits, one value
            length = int(declared)
        keep_alive = parser.should_keep_alive()
        # Upgrade (or CONNECT, refused above by its target): not followed. Asked of llhttp only when it can be so.
        if (upgrade or method == b"CONNECT") and parser.should_upgrade():
            if chunked or length:
                raise _Refusal(400, "a request asking for Upgrade cannot carry a body here")
            keep_alive = False
            self._done_reading = True  # llhttp treats what follows as another protocol's bytes
        expect = minor == 1 and expected is not None and expected.lower() == "100-continue"
        body = Body(self, not (chunked or length), expect)
        path, _, query = url.partition(b"?")
        transport = self.transport
        assert transport is not None
        return Request(
            method.decode("ascii"),
            path.decode("ascii"),
            query.decode("ascii"),
            minor,
            _HEADERS_VIEW(headers),
            tuple(raw),
            transport,
            length,
            chunked,
            keep_alive,
            body,
            self.remote,
        )

    def _minor_version(self, space: int) -> int:
        """The minor version of the head llhttp has just parsed (1 or 0), or the request refused (another version).

        A head that the read being parsed began with has its version where its method and target end (at
        ``space``, their length and the space between them), as the client wrote it, which llhttp has accepted:
        read there, it spares ``get_http_version()`` and its string formatting. (Empty lines that llhttp skipped
        before the request line put something else there: the version is then asked for.)
        """
        start = self._read_start
        if start is not None and self._heads_in_read == 1:
            line_end = start[space : space + 11]
            if line_end == b" HTTP/1.1\r\n":
                return 1
            if line_end == b" HTTP/1.0\r\n":
                return 0
        version = self._parser.get_http_version()
        if version == "1.1":
            return 1
        if version == "1.0":
            return 0
        raise _Refusal(400, f"HTTP/{version} is not supported; use HTTP/1.1")

    # -- serving ---------------------------------------------------------------------
    def _start(self, request: Request) -> None:
        """Serve ``request`` now: in the connection's task, which waits for it or is running (it takes it up when
        the request before is answered), or in a task started for it."""
        self._serving = request
        waiting = self._next
        if waiting is not None:
            self._next = None
            waiting.set_result(None)
        elif self.task is None:
            self.task = self.loop.create_task(self._serve())

    async def _serve(self) -> None:
        """Answers the connection's requests in turn (``_serving``), waiting between them while it is kept alive.

        One task for the requests of a connection, not one per request: creating a task adds it to asyncio's set of
        tasks and its end takes it out, both in Python code on Python 3.11. Each request still runs in a task, its
        log context set by its handler; the task ends with its connection (cancelled when the client goes).
        """
        try:
            while True:
                request = self._current()
                assert request is not None
                try:
                    try:
                        answer = await self._server.handler(request)
                    except Exception:  # a bug in the handler: JSON with a request id, never a traceback
                        request_id = new_request_id()
                        log.exception("unexpected error on request %s", request_id)
                        answer = internal_error_answer(request_id)
                    if isinstance(answer, StreamedAnswer):
                        if not answer.prepared:
                            await answer.prepare(request)
                        await answer.write_eof()
                    else:
                        body = answer.body
                        self.write_head(
                            answer.status,
                            answer.headers,
                            None,
                            body=b"" if request.method == "HEAD" else body,
                            length=len(body),
                        )
                except asyncio.CancelledError:
                    self.closing = True
                    return
                except (ConnectionResetError, BrokenPipeError):
                    self.closing = True
                except Exception:  # an answer that cannot be written (not a response, say): nothing more here
                    log.exception("could not write the answer to %s %s", request.method, request.path)
                    self.closing = True
                    if self.transport is not None:
                        self.transport.close()
                if not self._finish(request):
                    return
                if self._current() is None:  # nothing parsed ahead: wait for the next request (or the end)
                    waiting = self._next = self.loop.create_future()
                    try:
                        await waiting
                    except asyncio.CancelledError:  # the client went away while idle
                        return
        finally:
            self.task = None
            self._serving = None
            self._next = None

    def _current(self) -> Request | None:
        """The request to serve (read through a call: ``_finish`` and the parser's callbacks change it)."""
        return self._serving

    def _finish(self, request: Request) -> bool:
        """After an answer: close (False), or go on with the connection (True; ``_serving`` is the next request
        when one was parsed ahead)."""
        self._serving = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        body = request.content
        if not body.done and body.error is None:
            self._linger()
            return False
        if self.closing or not request.keep_alive or self._server.stopping:
            transport.close()
            return False
        self.idle_since = self.loop.time()
        if self._queue:
            following = self._queue.popleft()
            if isinstance(following, _Refusal):
                self._answer(following)
                return False
            self._serving = following
        if self._held or self._reading_paused:  # _release()'s own first test: no call when nothing waits
            self._release()
        return True

    def _linger(self) -> None:
        """Answered before its body was read (413, 401...): read the rest and drop it, then close.

        Closing with unread bytes would reset the connection, and the client,
        still sending, might lose the answer. Reading goes on until the body's
        end, at most ``LINGER_SECONDS``; the connection is not reused.
        """
        self.closing = True
        self._lingering = True
        self._queue.clear()
        if self._parsing is not None:
            self._parsing.content.parts = []
        self.loop.call_later(LINGER_SECONDS, self._close)
        self._release()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, refusal: _Refusal) -> None:
        """A request (or connection) the handler never sees: answered after those before it, then the connection closes."""
        self._done_reading = True
        self._server.refused(refusal.reason)
        if self._serving is not None:
            self._queue.append(refusal)
        else:
            self._answer(refusal)

    def _answer(self, refusal: _Refusal) -> None:
        self.closing = True
        error_type = "overloaded_error" if refusal.status == 503 else "invalid_request_error"
        body = error_body(refusal.message, error_type, refusal.code)
        with contextlib.suppress(ConnectionResetError):  # the client is gone already: nothing to tell it
            self.write_head(refusal.status, {"Content-Type": "application/json"}, None, body=body, length=len(body))
        self._close()

    def check_timeouts(self, now: float, idle_deadline: float) -> None:
        """From the server's sweep: a head awaited too long is answered 408; an idle keep-alive connection is closed."""
        transport = self.transport
        if self._serving is not None or transport is None or transport.is_closing():
            return
        began = self._head_began
        if began is not None:
            timeout = self._server.head_timeout
            if now - began > timeout:
                if self._in_head:
                    self._refuse(
                        _Refusal(
                            408,
                            f"the request head did not arrive within {timeout:g}s",
                            "head_timeout",
                            "request_timeout",
                        )
                    )
                else:  # not a byte of a request: nobody to answer
                    self._server.refused("head_timeout")
                    self._close()
        elif self._parsing is None and not self._queue and self.idle_since < idle_deadline:
            self._close()

    # -- the body ----------------------------------------------------------------------
    def body_wanted(self, body: Body) -> None:
        """The handler asks for ``body`` for the first time: owe no more 100 Continue, let its bytes through."""
        if body.expect_continue and not body.done and not body.size and not self._held:
            # The client is waiting for it before it sends the body.
            with contextlib.suppress(ConnectionResetError):
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body.expect_continue = False
        if self._held or self._reading_paused:  # _release()'s own first test: no call when nothing waits
            self._release()

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
        lines = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"]
        known_lines = self._server.header_lines
        broken = False
        if type(headers) is dict:  # the usual answer's headers: a dict of str, walked without generic iteration
            plain: dict[str, str] = headers
            for name, value in plain.items():
                line = _header_line(known_lines, name, value)
                if line is None:
                    broken = True
                    break
                if line:
                    lines.append(line)
        else:
            for name, value in headers.items() if isinstance(headers, Mapping) else headers:
                line = _header_line(known_lines, name, value)
                if line is None:
                    broken = True
                    break
                if line:
                    lines.append(line)
        if framing is not None:
            lines.append(f"{framing[0]}: {framing[1]}\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        request = self._serving
        if (
            self.closing
            or self._server.stopping
            or request is None
            or not request.keep_alive
            or not request.content.done
            or (streaming and framing is None)
        ):
            lines.append("Connection: close\r\n")
            self.closing = True
        elif request.version == 0:
            lines.append("Connection: keep-alive\r\n")  # an HTTP/1.0 client that asked for it closes without it
        if broken:
            log.error("refusing to send a response header with CR, LF or NUL in it (status %d)", status)
            self.closing = True
            body = error_body("the gateway built an invalid response header", "server_error", "internal_error")
            text = (
                f"HTTP/1.1 500 {_REASONS[500]}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n"
            )
        else:
            text = "".join(lines)
        try:
            head = text.encode()  # the usual head: no codec lookup
        except UnicodeEncodeError:  # a value that came from a client's undecodable bytes
            head = text.encode("utf-8", "surrogateescape")
        self.write(b"".join((head, _DATE.line(), body)))

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if not self.writing_paused:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        if self._drain is None:
            self._drain = self.loop.create_future()
        await asyncio.shield(self._drain)

    def close_if_idle(self) -> bool:
        if self._serving is None and self.transport is not None:
            self.transport.close()
            return True
        return False


class HttpServer:
    """Listens on one address; ``handler`` answers each request; ``on_refused(reason)`` hears of each refusal (:data:`REFUSALS`)."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_head: int = 64 * 1024,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        head_timeout: float = HEAD_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.handler = handler
        self.max_head = max_head
        self.keepalive_timeout = keepalive_timeout
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self._on_refused = on_refused
        self.connections: set[_Connection] = set()
        # Answer header name -> its line's prefix, and the line last written with it (write_head, _header_line).
        self.header_lines: dict[str, _HeaderLine] = {}
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        # Timeouts are checked by one sweep over the connections, often enough for the shorter of them.
        self._sweep_every = min(1.0, max(0.05, min(head_timeout, keepalive_timeout) / 4))
        self.port = 0

    def protocol_factory(self) -> asyncio.Protocol:
        return _Connection(self)

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 2048) -> int:
        """Binds and listens; returns the bound port."""
        self._server = await self.loop.create_server(
            self.protocol_factory, host, port, reuse_port=reuse_port or None, backlog=backlog
        )
        server: Any = self._server  # its sockets: a list under uvloop, where asyncio's typing says a tuple
        self.port = int(server.sockets[0].getsockname()[1])
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)
        return self.port

    def refused(self, reason: str) -> None:
        if self._on_refused is not None:
            try:
                self._on_refused(reason)
            except Exception:  # counting must never break serving
                log.exception("on_refused(%r) failed", reason)

    def _sweep(self) -> None:
        """Answers heads awaited past ``head_timeout`` (408) and closes keep-alive connections idle past their timeout."""
        now = self.loop.time()
        idle_deadline = now - self.keepalive_timeout
        for conn in list(self.connections):
            conn.check_timeouts(now, idle_deadline)
        if not self.stopping:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

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
        # The tasks of the connections with a request in flight (an idle one was closed above: its task ends).
        tasks = {conn.task for conn in self.connections if conn.task is not None and conn._serving is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%d request(s) still running after the %.0fs grace period were cancelled", len(pending), grace
                )
                await asyncio.wait(pending, timeout=1.0)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
