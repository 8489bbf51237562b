"""A stream's reads: each awaits the connection's own future, resolved with the piece; none is lost or reordered."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.upstream.client import ResponseError, UpstreamHttp

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Paced:
    """An upstream that answers one request with HEAD, then writes each piece when the test says so."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.ready = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        self.writer = writer
        self.ready.set()

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()


async def _stream() -> tuple[_Paced, asyncio.Server, UpstreamHttp]:
    paced = _Paced()
    server = await asyncio.start_server(paced.serve, "127.0.0.1", 0)
    pool = UpstreamHttp(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    return paced, server, pool


async def test_pieces_reach_the_reader_in_order_and_the_end_reads_empty_every_time() -> None:
    paced, server, pool = await _stream()
    async with server, asyncio.timeout(5):
        resp = await pool.request("GET", "/", [])
        await paced.ready.wait()
        pending = asyncio.ensure_future(resp.readany())  # waits: nothing arrived yet
        await asyncio.sleep(0.01)
        assert not pending.done()
        await paced.send(_chunk(b"one"))
        assert await pending == b"one"
        await paced.send(_chunk(b"two") + _chunk(b"three"))
        await asyncio.sleep(0.01)  # both arrived before the read: one piece
        assert await resp.readany() == b"twothree"
        await paced.send(b"0\r\n\r\n")
        assert await resp.readany() == b""
        assert await resp.readany() == b""
        resp.release()
        await pool.close()


async def test_a_read_cancelled_while_waiting_loses_nothing_that_arrives_after() -> None:
    paced, server, pool = await _stream()
    async with server, asyncio.timeout(5):
        resp = await pool.request("GET", "/", [])
        await paced.ready.wait()
        pending = asyncio.ensure_future(resp.readany())
        await asyncio.sleep(0.01)
        pending.cancel()
        await paced.send(_chunk(b"kept"))
        await asyncio.sleep(0.01)
        assert await resp.readany() == b"kept"
        resp.close()
        await pool.close()


async def test_a_stream_that_breaks_raises_in_the_waiting_reader() -> None:
    paced, server, pool = await _stream()
    async with server, asyncio.timeout(5):
        resp = await pool.request("GET", "/", [])
        await paced.ready.wait()
        pending = asyncio.ensure_future(resp.readany())
        await asyncio.sleep(0.01)
        assert paced.writer is not None
        paced.writer.close()
        with pytest.raises(ResponseError, match="before the response was complete"):
            await pending
        resp.close()
        await pool.close()


async def test_a_whole_answer_is_taken_at_once_and_a_partial_one_is_left_to_read() -> None:
    paced, server, pool = await _stream()
    async with server, asyncio.timeout(5):
        resp = await pool.request("GET", "/", [])
        await paced.ready.wait()
        await paced.send(_chunk(b"part"))
        await asyncio.sleep(0.01)
        assert resp.whole() is None  # the body goes on: read() it
        await paced.send(_chunk(b" and the rest") + b"0\r\n\r\n")
        assert await resp.read() == b"part and the rest"
        resp.release()
        await pool.close()
    paced, server, pool = await _stream()
    async with server, asyncio.timeout(5):
        resp = await pool.request("GET", "/", [])
        await paced.ready.wait()
        await paced.send(_chunk(b"all") + _chunk(b" of it") + b"0\r\n\r\n")
        await asyncio.sleep(0.01)
        assert resp.whole() == b"all of it"
        assert resp.whole() is None and await resp.read() == b""  # taken once
        resp.release()
        await pool.close()
