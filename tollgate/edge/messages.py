"""What a handler on the public listener is given, and how it streams an answer: :class:`Request`, its :class:`Body`, :class:`StreamedAnswer`, :data:`Handler`.

The connection that parses requests and writes answers is in ``server.py``;
complete answers (:class:`~tollgate.edge.answers.Response`) are made in
``answers.py``. Nothing here reads or writes a socket: a body is fed by its
connection as llhttp parses it, and a streamed answer writes through its
connection's :class:`Connection` methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Protocol, TypeAlias
from urllib.parse import parse_qsl

from multidict import CIMultiDictProxy, MultiDict, MultiDictProxy

from tollgate.edge.answers import Response
from tollgate.errors import BadRequest

__all__ = ["Body", "Connection", "Handler", "Request", "StreamedAnswer"]

# A chunk's size line for each size up to a few events' worth, made once: a streamed piece's framing is a lookup and
# two concatenations, where formatting ``b"%x\r\n%b\r\n"`` costs about twice as much (once an event of a stream).
_SIZE_LINES: Final = tuple([b"%x\r\n" % n for n in range(2048)])


class Connection(Protocol):
    """What a request's body and a streamed answer need of the connection they belong to."""

    loop: asyncio.AbstractEventLoop
    writing_paused: bool  # the client reads slower than the answer is written: ``drain()`` would wait

    def body_wanted(self, body: Body) -> None:
        """The handler asks for ``body`` for the first time."""

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

    def write(self, data: bytes) -> None:
        """Raises ``ConnectionResetError`` when the client has gone."""

    async def drain(self) -> None:
        """Waits while the client reads slower than the answer is written."""


class Body:
    """A request body as it arrives: ``read(n)`` returns up to ``n`` bytes (all of it for ``n < 0``), ``b""`` at its end."""

    __slots__ = ("connection", "parts", "size", "done", "error", "wanted", "expect_continue", "_waiter")

    def __init__(self, connection: Connection, done: bool, expect_continue: bool) -> None:
        self.connection = connection
        self.parts: list[bytes] = []
        self.size = 0  # bytes in parts
        self.done = done  # the last byte has arrived
        self.error: str | None = None  # the body's framing was malformed
        self.wanted = False  # the handler has asked for it
        self.expect_continue = expect_continue  # a 100 Continue is owed when it is first asked for
        self._waiter: asyncio.Future[None] | None = None

    async def read(self, n: int = -1) -> bytes:
        if not self.wanted:
            self.wanted = True
            self.connection.body_wanted(self)
        while True:
            if self.error is not None:
                raise BadRequest(f"the request body could not be read: {self.error}", code="invalid_body")
            parts = self.parts
            if parts and (n >= 0 or self.done):
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if 0 <= n < len(data):
                    self.parts = [data[n:]]
                    data = data[:n]
                else:
                    self.parts = []
                self.size -= len(data)
                return data
            if self.done:
                return b""
            waiter = self._waiter = self.connection.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def whole(self) -> bytes | None:
        """The whole body, as ``read()`` gives it, when it has all arrived and is sound; None: ``read()`` it.

        Spares a coroutine for the usual JSON body, which arrives with its head."""
        if not self.done or self.error is not None:
            return None
        if not self.wanted:
            self.wanted = True
            self.connection.body_wanted(self)
        parts = self.parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.parts = []
        self.size -= len(data)
        return data

    def feed(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        self._wake()

    def end(self) -> None:
        self.done = True
        self._wake()

    def fail(self, message: str) -> None:
        self.error = message
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Request:
    """What the handler sees of one request; the attribute names follow aiohttp's ``BaseRequest``."""

    __slots__ = (
        "method",
        "path",
        "query_string",
        "version",
        "headers",
        "raw_headers",
        "transport",
        "content_length",
        "chunked",
        "keep_alive",
        "content",
        "remote",
        "_query",
    )

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
        remote: str | None = None,
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
        self.remote = remote  # the peer's address (its connection's, asked once), as aiohttp's ``remote``
        self._query: MultiDictProxy[str] | None = None

    @property
    def query(self) -> MultiDictProxy[str]:
        if self._query is None:
            self._query = MultiDictProxy(MultiDict(parse_qsl(self.query_string, keep_blank_values=True)))
        return self._query

    @property
    def host(self) -> str | None:
        return self.headers.get("Host")

    async def read(self) -> bytes:
        """The whole body."""
        return await self.content.read()


class StreamedAnswer:
    """An answer written piece by piece (SSE): ``prepare``, ``write`` as often as needed, ``write_eof``."""

    __slots__ = ("status", "headers", "_conn", "_chunked", "prepared", "eof_sent")

    def __init__(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self._conn: Connection | None = None
        self._chunked = True
        self.prepared = False
        self.eof_sent = False

    async def prepare(self, request: Request, first: bytes = b"") -> None:
        """Write the status line and headers; with ``first``, the answer's first piece in the same write (a relay's
        first event: one system call fewer per stream). Raises ``ConnectionResetError`` when the client has gone."""
        conn = request.content.connection
        if self.prepared:
            if first:
                await self.write(first)
            return
        self._conn = conn
        self._chunked = request.version == 1
        framing = ("Transfer-Encoding", "chunked") if self._chunked else None
        body = first if not first or not self._chunked else b"%x\r\n%b\r\n" % (len(first), first)
        conn.write_head(self.status, self.headers, framing, body=body, streaming=True)
        self.prepared = True
        if first and conn.writing_paused:
            await conn.drain()

    async def write(self, data: bytes) -> None:
        if self.send(data):
            await self.drain()

    def send(self, data: bytes) -> bool:
        """:meth:`write` without a coroutine: True when the client reads slower than the answer is written, and
        ``drain()`` must be awaited before the next piece (a relay's one call per event)."""
        conn = self._conn
        if conn is None or self.eof_sent:
            raise RuntimeError("write() before prepare() or after write_eof()")
        if not data:
            return False
        if self._chunked:
            size = len(data)
            conn.write(_SIZE_LINES[size] + data + b"\r\n" if size < 2048 else b"%x\r\n%b\r\n" % (size, data))
        else:
            conn.write(data)
        return conn.writing_paused

    async def drain(self) -> None:
        """Waits while the client reads slower than the answer is written."""
        if self._conn is not None:
            await self._conn.drain()

    async def write_eof(self, last: bytes = b"") -> None:
        """End the answer; with ``last``, its last piece goes in the same write (a relay's last event: one system
        call fewer per stream). Raises ``ConnectionResetError`` when the client has gone."""
        conn = self._conn
        if conn is None or self.eof_sent:
            if last:
                raise RuntimeError("write() before prepare() or after write_eof()")
            return
        self.eof_sent = True
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last) if last else b"0\r\n\r\n")
        elif last:
            conn.write(last)
        await conn.drain()


Handler: TypeAlias = Callable[[Request], Awaitable[Response | StreamedAnswer]]
"""What the public listener runs for each request: a complete answer, or one it has streamed itself."""
