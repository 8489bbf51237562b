"""A Redis connection after its handshake: pipelines written, replies parsed by hiredis as they arrive.

redis-py opens each connection (the URL's host or socket, TLS, AUTH, database
and protocol) and then its transport is handed to a :class:`RedisPipe`. From
then on the event loop's data callback feeds hiredis directly, and a round
trip's :class:`ReplySink` is called once all of its replies are in. On a busy
gateway redis-py's read path (a StreamReader, a coroutine per reply, its
parser's Python layers) cost more of the gateway's CPU than building and
writing the script calls.

One round trip at a time per connection: the engine lends a connection to a
round trip and takes it back when the replies are in. Bytes that arrive while
no round trip waits, or a reply hiredis cannot parse, leave the connection out
of step with its commands: it is closed, never reused.
"""

from __future__ import annotations

import asyncio
import select
from typing import Any, Final, Protocol

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse

__all__ = ["RedisPipe", "ReplySink"]

# hiredis's answer when the bytes fed so far end before the next reply (False is a RESP3 reply of its own).
_MORE: Final = object()


class ReplySink(Protocol):
    """What a round trip's replies are handed to: all of them, in order, or the reason none will come."""

    def replied(self, replies: list[Any]) -> None: ...

    def failed(self, exc: BaseException) -> None: ...


class RedisPipe(asyncio.Protocol):
    """One connected Redis connection's bytes: a round trip's commands out, its replies in, parsed in C."""

    __slots__ = ("conn", "transport", "loop", "lost", "_closed", "_reader", "_want", "_replies", "_sink")

    def __init__(self, conn: Any, transport: Any, loop: asyncio.AbstractEventLoop, parse_error: Any) -> None:
        self.conn = conn  # redis-py's connection, which opened this one: it is told when this one closes
        self.transport = transport
        self.loop = loop
        self.lost = False
        self._closed = False
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=parse_error, notEnoughData=_MORE)
        self._want = 0
        self._replies: list[Any] = []
        self._sink: ReplySink | None = None

    @classmethod
    def adopt(cls, conn: Any) -> RedisPipe | None:
        """The pipe of a redis-py connection that has just connected, its transport handed over; None when redis-py
        holds bytes it has read but not parsed (nothing should follow a handshake), so the connection is not used."""
        writer = conn._writer
        stream = conn._reader
        parser = conn._parser
        if writer is None or stream is None or stream._buffer or stream.at_eof():
            return None
        inner = getattr(parser, "_reader", None)
        if inner is not None and inner.has_data():
            return None
        transport = writer.transport
        pipe = cls(conn, transport, asyncio.get_running_loop(), parser.parse_error)
        transport.set_protocol(pipe)
        return pipe

    def usable(self) -> bool:
        """Open, and not closing: a round trip may be written on it."""
        return not self.lost and not self.transport.is_closing()

    def expect(self, count: int, sink: ReplySink) -> None:
        """The next ``count`` replies go to ``sink`` (before the commands are written)."""
        self._want = count
        self._sink = sink

    def write(self, data: bytes) -> None:
        """Writes a round trip's commands; a transport that cannot take them is the store's connection error."""
        try:
            self.transport.write(data)
        except Exception as exc:  # closed under us: the caller's round trip fails as a lost connection does
            raise RedisConnectionError(f"cannot write to the store: {exc}") from exc

    def abandon(self) -> None:
        """Stops waiting for the round trip (its time is up) and closes the connection: replies may still come."""
        self._sink = None
        self.close()

    def fail(self, exc: BaseException) -> None:
        """The waiting round trip, if any, gets ``exc``; the connection is closed."""
        sink, self._sink = self._sink, None
        self.close()
        if sink is not None:
            sink.failed(exc)

    def close(self) -> None:
        """Closes the connection. redis-py's connection object forgets its transport too: it would otherwise warn
        of it as unclosed, and its own close would wait for a stream protocol that no longer hears of the end."""
        self.lost = True
        if self._closed:
            return
        self._closed = True
        self.transport.close()
        conn = self.conn
        conn._writer = conn._reader = None

    def answer_waiting(self) -> bool:
        """Has the store sent bytes not handed over yet (parsed, buffered, or in the socket)? Never blocks."""
        if self._replies or self._reader.has_data():
            return True
        try:
            sock = self.transport.get_extra_info("socket")
            if sock is None:
                return False
            poller = select.poll()  # not select(): a busy gateway has descriptors past FD_SETSIZE
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):  # closed under us: nothing will come
            return False

    # -- asyncio.Protocol -------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        reader = self._reader
        replies = self._replies
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not _MORE:
                replies.append(reply)
                reply = reader.gets()
        except InvalidResponse as exc:
            self._out_of_step(exc)
            return
        sink = self._sink
        if sink is None:
            if replies:
                self._out_of_step(InvalidResponse("a reply arrived that no command asked for"))
            return
        if len(replies) < self._want:
            return
        if len(replies) > self._want:
            self._out_of_step(InvalidResponse(f"{len(replies)} replies arrived for {self._want} commands"))
            return
        self._sink = None
        self._replies = []
        sink.replied(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        sink, self._sink = self._sink, None
        if sink is not None:
            error = RedisConnectionError(
                f"connection to the store lost: {exc}" if exc else "connection closed by the store"
            )
            sink.failed(error)

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost tells the waiting round trip

    def _out_of_step(self, exc: Exception) -> None:
        self._replies = []
        self.fail(exc)
