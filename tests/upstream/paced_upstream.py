"""An upstream for the stream-reading tests: it answers one request with a chunked SSE head, then writes each piece
when the test says so, so that a test decides what has arrived when the client reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tollgate.upstream.client import UpstreamHttp, UpstreamResponse

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Paced:
    """Answers one request with HEAD, then writes each piece when the test says so; ``settle``: seconds it waits
    after each piece, so that the client has read it before the test goes on."""

    def __init__(self, settle: float = 0.0) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.ready = asyncio.Event()
        self.settle = settle

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        self.writer = writer
        self.ready.set()

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()
        if self.settle:
            await asyncio.sleep(self.settle)


async def paced_stream(settle: float = 0.0) -> tuple[Paced, asyncio.Server, UpstreamHttp]:
    """A paced upstream, its server, and a client pool pointed at it."""
    paced = Paced(settle)
    server = await asyncio.start_server(paced.serve, "127.0.0.1", 0)
    pool = UpstreamHttp(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    return paced, server, pool


@contextlib.asynccontextmanager
async def paced_response(settle: float = 0.0, method: str = "GET") -> AsyncIterator[tuple[Paced, UpstreamResponse]]:
    """A paced upstream and the response of one request to it, its head arrived; within 5 s, the pool closed after."""
    paced, server, pool = await paced_stream(settle)
    async with server, asyncio.timeout(5):
        try:
            response = await pool.request(method, "/", [])
            await paced.ready.wait()
            yield paced, response
        finally:
            await pool.close()
