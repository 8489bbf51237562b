"""A stream's reads: each awaits the connection's own future, resolved with the piece; none is lost or reordered."""

from __future__ import annotations

import asyncio

import pytest

from tests.upstream.paced_upstream import chunk, paced_response
from tollgate.upstream.client import ResponseError


async def test_pieces_reach_the_reader_in_order_and_the_end_reads_empty_every_time() -> None:
    async with paced_response() as (paced, resp):
        pending = asyncio.ensure_future(resp.readany())  # waits: nothing arrived yet
        await asyncio.sleep(0.01)
        assert not pending.done()
        await paced.send(chunk(b"one"))
        assert await pending == b"one"
        await paced.send(chunk(b"two") + chunk(b"three"))
        await asyncio.sleep(0.01)  # both arrived before the read: one piece
        assert await resp.readany() == b"twothree"
        await paced.send(b"0\r\n\r\n")
        assert await resp.readany() == b""
        assert await resp.readany() == b""
        resp.release()


async def test_a_read_cancelled_while_waiting_loses_nothing_that_arrives_after() -> None:
    async with paced_response() as (paced, resp):
        pending = asyncio.ensure_future(resp.readany())
        await asyncio.sleep(0.01)
        pending.cancel()
        await paced.send(chunk(b"kept"))
        await asyncio.sleep(0.01)
        assert await resp.readany() == b"kept"
        resp.close()


async def test_a_stream_that_breaks_raises_in_the_waiting_reader() -> None:
    async with paced_response() as (paced, resp):
        pending = asyncio.ensure_future(resp.readany())
        await asyncio.sleep(0.01)
        assert paced.writer is not None
        paced.writer.close()
        with pytest.raises(ResponseError, match="before the response was complete"):
            await pending
        resp.close()


async def test_a_whole_answer_is_taken_at_once_and_a_partial_one_is_left_to_read() -> None:
    async with paced_response() as (paced, resp):
        await paced.send(chunk(b"part"))
        await asyncio.sleep(0.01)
        assert resp.whole() is None  # the body goes on: read() it
        await paced.send(chunk(b" and the rest") + b"0\r\n\r\n")
        assert await resp.read() == b"part and the rest"
        resp.release()
    async with paced_response() as (paced, resp):
        await paced.send(chunk(b"all") + chunk(b" of it") + b"0\r\n\r\n")
        await asyncio.sleep(0.01)
        assert resp.whole() == b"all of it"
        assert resp.whole() is None and await resp.read() == b""  # taken once
        resp.release()
