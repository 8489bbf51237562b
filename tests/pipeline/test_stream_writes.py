"""How a relayed stream reaches the client's socket: the head and the first event in one write, the last event and
the chunked body's end in one write when the upstream's body ends with it, and the last event never held back
waiting for an upstream that has not ended its body yet.

The whole gateway in-process (no rules), an upstream the test paces, a raw client; the writes counted are those of
the public listener's connection (``_Connection.write``, one ``transport.write`` each, counted at the transport).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.upstream.paced_upstream import HEAD, chunk
from tollgate.config import load_config
from tollgate.edge import server as edge_server
from tollgate.process.public import make_public_server, public_lifecycle
from tollgate.runtime.state import GatewayState

CONFIG = """\
listeners:
  public: {host: 127.0.0.1, port: 0}
  admin: {enabled: false}
upstreams:
  paced: {base_url: "http://127.0.0.1:$port/v1"}
models:
  gpt-4o-mini: {deployments: [{upstream: paced}]}
"""
COMMON = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
)
DONE = b"data: [DONE]\n\n"
END = b"0\r\n\r\n"


def _event(content: str) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
    return b"data: " + orjson.dumps({**COMMON, "choices": [choice]}) + b"\n\n"


class _Upstream:
    """Answers each request with an SSE head, then writes each piece the test puts in ``pieces``, one write each:
    the test puts the next one only once the client has what the last one gave, so each is read on its own."""

    def __init__(self) -> None:
        self.pieces: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        writer.write(HEAD)
        while True:
            piece = await self.pieces.get()
            writer.write(piece)
            await writer.drain()
            if piece.endswith(END):
                return


class _Writes:
    """The public listener's writes, recorded: each connection the server makes is handed a transport that records
    what it is asked to write (``_Connection.write`` is the only caller of ``transport.write``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.all: list[bytes] = []
        loop = asyncio.get_running_loop()
        create_server = loop.create_server

        def recorded(factory: Any) -> Any:
            protocol = factory()  # the test's upstream is served on this loop too: only the listener is recorded
            return _RecordedProtocol(protocol, self.all) if isinstance(protocol, edge_server._Connection) else protocol

        async def recording_server(factory: Any, *args: Any, **kwargs: Any) -> Any:
            return await create_server(lambda: recorded(factory), *args, **kwargs)

        monkeypatch.setattr(loop, "create_server", recording_server)


class _RecordedProtocol:
    """A connection's protocol, handed a transport that records its writes; everything else is the protocol's own."""

    def __init__(self, protocol: Any, writes: list[bytes]) -> None:
        self._protocol = protocol
        self._writes = writes

    def connection_made(self, transport: Any) -> None:
        self._protocol.connection_made(_RecordingTransport(transport, self._writes))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)


class _RecordingTransport:
    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _gateway(upstream: _Upstream) -> AsyncIterator[int]:
    origin = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    config = CONFIG.replace("$port", str(origin.sockets[0].getsockname()[1]))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config)
    try:
        state = GatewayState(load_config(f.name))
    finally:
        os.unlink(f.name)
    try:
        async with public_lifecycle(state):
            server = make_public_server(state)
            port = await server.start("127.0.0.1", 0)
            yield port
            await server.shutdown(0.5)
    finally:
        origin.close()


async def _request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    return reader, writer


async def _relayed(upstream: _Upstream, reader: asyncio.StreamReader, steps: list[tuple[bytes, bytes]]) -> bytes:
    """Each piece sent by the upstream once the client has read what the one before gave (what ``steps`` pairs
    with it): what the client read."""
    got = b""
    for piece, expected in steps:
        upstream.pieces.put_nowait(piece)
        while not got.endswith(expected):
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, got
            got += data
    return got


async def test_the_head_goes_with_the_first_event_and_the_end_with_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _Writes(monkeypatch)
    a, b, c = _event("a"), _event("b"), _event("c")
    upstream = _Upstream()
    async for port in _gateway(upstream):
        reader, writer = await _request(port)
        steps = [(chunk(a), chunk(a)), (chunk(b), chunk(b)), (chunk(c), chunk(c)), (chunk(DONE) + END, END)]
        answer = await _relayed(upstream, reader, steps)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(chunk(a) + chunk(b) + chunk(c) + chunk(DONE) + END)
    assert len(writes.all) == 4, "head + first event, two events, last event + end"
    assert writes.all[0].startswith(b"HTTP/1.1 200 ") and writes.all[0].endswith(b"\r\n\r\n" + chunk(a))
    assert writes.all[1:] == [chunk(b), chunk(c), chunk(DONE) + END]


async def test_the_last_event_is_not_held_for_an_upstream_that_has_not_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = _Writes(monkeypatch)
    a, b = _event("a"), _event("b")
    upstream = _Upstream()
    async for port in _gateway(upstream):
        reader, writer = await _request(port)
        # [DONE] reaches the client while the upstream's body is still open; the end follows on its own.
        steps = [(chunk(a), chunk(a)), (chunk(b), chunk(b)), (chunk(DONE), chunk(DONE)), (END, END)]
        answer = await _relayed(upstream, reader, steps)
        writer.close()
    assert answer.endswith(chunk(a) + chunk(b) + chunk(DONE) + END)
    assert writes.all[1:] == [chunk(b), chunk(DONE), END]
