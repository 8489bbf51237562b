"""A stream relayed in the connection's callbacks: ``UpstreamResponse.relay`` gives each piece to the pump as it
arrives, the reader waking only when the pump stops, the body ends or the stream breaks; nothing lost or reordered."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from tests.upstream.paced_upstream import HEAD, chunk, paced_response
from tollgate.upstream.client import ResponseError, UpstreamHttp


class _Pump:
    """Takes every piece but those it is told to stop at; raises on the piece it is told to."""

    def __init__(self, stop_at: bytes = b"", fail_at: bytes = b"") -> None:
        self.taken: list[bytes] = []
        self.stop_at = stop_at
        self.fail_at = fail_at

    def __call__(self, piece: bytes) -> bool:
        if self.fail_at and piece == self.fail_at:
            raise ValueError("the pump failed")
        self.taken.append(piece)
        return piece != self.stop_at


async def test_the_pump_takes_each_piece_as_it_arrives_and_the_reader_wakes_at_the_end() -> None:
    async with paced_response(0.01) as (paced, resp):
        pump = _Pump()
        pending = asyncio.ensure_future(resp.relay(pump))
        await paced.send(chunk(b"one"))
        await paced.send(chunk(b"two") + chunk(b"three"))
        assert not pending.done()  # every piece was the pump's: the reader never woke
        assert pump.taken == [b"one", b"twothree"]
        await paced.send(b"0\r\n\r\n")
        assert await pending == b""
        resp.release()


async def test_a_piece_and_the_end_in_one_read_wake_the_reader_with_the_end() -> None:
    async with paced_response(0.01) as (paced, resp):
        pump = _Pump()
        pending = asyncio.ensure_future(resp.relay(pump))
        await asyncio.sleep(0.01)
        await paced.send(chunk(b"last") + b"0\r\n\r\n")
        assert await pending == b""
        assert pump.taken == [b"last"]
        resp.release()


async def test_the_reader_wakes_with_none_where_the_pump_stops_and_reads_the_rest_itself() -> None:
    async with paced_response(0.01) as (paced, resp):
        pump = _Pump(stop_at=b"two")
        pending = asyncio.ensure_future(resp.relay(pump))
        await paced.send(chunk(b"one"))
        assert not pending.done()
        await paced.send(chunk(b"two"))
        assert await pending is None
        assert pump.taken == [b"one", b"two"]
        await paced.send(chunk(b"three"))  # no relay waiting: it waits for the next read
        assert await resp.readany() == b"three"
        assert pump.taken == [b"one", b"two"]
        await paced.send(b"0\r\n\r\n")
        assert await resp.relay(pump) == b""
        resp.release()


async def test_pieces_already_arrived_go_to_the_reader_not_the_pump() -> None:
    async with paced_response(0.01) as (paced, resp):
        await paced.send(chunk(b"early"))
        pump = _Pump()
        assert await resp.relay(pump) == b"early"
        assert pump.taken == []
        resp.close()


async def test_a_pump_that_raises_raises_in_the_reader() -> None:
    async with paced_response(0.01) as (paced, resp):
        pending = asyncio.ensure_future(resp.relay(_Pump(fail_at=b"bad")))
        await paced.send(chunk(b"bad"))
        with pytest.raises(ValueError, match="the pump failed"):
            await pending
        resp.close()


async def test_a_relay_cancelled_while_waiting_hands_what_arrives_after_to_the_next_read() -> None:
    async with paced_response(0.01) as (paced, resp):
        pump = _Pump()
        pending = asyncio.ensure_future(resp.relay(pump))
        await asyncio.sleep(0.01)
        pending.cancel()
        await paced.send(chunk(b"kept"))
        assert pump.taken == []
        assert await resp.readany() == b"kept"
        resp.close()


async def test_a_stream_that_breaks_under_the_pump_raises_in_the_reader() -> None:
    async with paced_response(0.01) as (paced, resp):
        pump = _Pump()
        pending = asyncio.ensure_future(resp.relay(pump))
        await paced.send(chunk(b"one"))
        assert paced.writer is not None
        paced.writer.close()
        with pytest.raises(ResponseError):
            await pending
        assert pump.taken == [b"one"]
        resp.close()


async def test_a_pump_raising_stop_iteration_still_wakes_the_reader_with_an_error() -> None:
    def pump(piece: bytes) -> bool:
        raise StopIteration  # a future refuses it: the reader must not be left waiting

    async with paced_response(0.01, "POST") as (paced, response):
        pending = asyncio.ensure_future(response.relay(pump))
        await paced.send(chunk(b"one"))
        with pytest.raises(RuntimeError, match="StopIteration"):
            await pending
        response.release()


WHOLE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def test_the_pump_runs_in_the_relaying_requests_context_on_a_connection_another_request_opened() -> None:
    # A pooled connection's callbacks run in the context of the request that opened it; the pump must carry the
    # request being relayed (its log lines, the tasks it starts).
    writers: list[asyncio.StreamWriter] = []
    streamed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(WHOLE)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD)
        writers.append(writer)
        streamed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    pool = UpstreamHttp(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    seen: list[str] = []

    async def opener() -> None:
        _WHO.set("opener")
        response = await pool.request("GET", "/", [])
        assert await response.read() == b"ok"
        response.release()  # kept alive: the relayed request reuses this connection

    async def relayed() -> None:
        _WHO.set("relayed")
        response = await pool.request("GET", "/", [])
        await streamed.wait()

        def pump(piece: bytes) -> bool:
            seen.append(_WHO.get())
            return True

        pending = asyncio.ensure_future(response.relay(pump))
        writers[0].write(chunk(b"one"))
        await asyncio.sleep(0.05)
        writers[0].write(b"0\r\n\r\n")
        assert await pending == b""
        response.release()

    async with server, asyncio.timeout(5):
        await asyncio.create_task(opener())
        await asyncio.create_task(relayed())
        await pool.close()
    assert seen == ["relayed"]
