"""The upstream HTTP/1.1 client against scripted loopback servers: framing, inflating, pooling, cancellation."""

from __future__ import annotations

import asyncio
import functools
import gzip
import os
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tollgate.upstream import client as upstream_http
from tollgate.upstream.client import ConnectError, ResponseError, TracedHttp, UpstreamHttp, UpstreamResponse

from .support.processes import refusing_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class ScriptedUpstream:
    """A loopback server that runs ``script`` on every accepted connection and records what it saw."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.accepted = 0
        self.open = 0  # connections whose script has not yet ended (the scripts below run until the client's EOF)
        self.most_open = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # Every scripted write leaves at once as its own segment.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.script(self, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client hung up, or stop(): Python 3.11's start_server logs a cancelled handler as an error
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)


Script = Callable[[ScriptedUpstream, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request, head and ``Content-Length`` body, as sent; ``None`` once the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def send(writer: asyncio.StreamWriter, parts: Sequence[bytes], pause: float = 0.005) -> None:
    """Each part in its own write, with a pause so that the client reads it on its own."""
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(pause)


def replies(*parts: bytes, close: bool = False, pause: float = 0.005) -> Script:
    """Answer every request on a connection with ``parts``; ``close`` hangs up after the first answer."""

    async def script(server: ScriptedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            await send(writer, parts, pause)
            if close:
                return

    return script


@asynccontextmanager
async def serve(script: Script, path: str = "", **options: Any) -> AsyncIterator[tuple[ScriptedUpstream, UpstreamHttp]]:
    server = ScriptedUpstream(script)
    await server.start()
    pool = UpstreamHttp(f"http://127.0.0.1:{server.port}{path}", **options)
    try:
        async with asyncio.timeout(10):  # a hung read fails the test instead of stalling the run
            yield server, pool
    finally:
        await pool.close()
        await server.stop()


async def fetch(
    pool: UpstreamHttp, method: str = "GET", path: str = "/", headers: Sequence[tuple[str, str]] = (), body: bytes = b""
) -> tuple[UpstreamResponse, bytes]:
    """One request read to its end and released, as tollgate/pipeline/forward.py does it."""
    resp = await pool.request(method, path, list(headers), body)
    try:
        return resp, await resp.read()
    finally:
        resp.release()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# ---------------------------------------------------------------- framing


async def test_kept_alive_connection_is_reused_for_the_second_request() -> None:
    async with serve(replies(OK)) as (server, pool):
        for _ in range(2):
            resp, body = await fetch(pool)
            assert (resp.status, body, resp.headers["content-length"]) == (200, b"hello", "5")
        assert server.accepted == 1 and len(server.requests) == 2
        assert pool.idle_connections == 1 and pool.in_use == 0


async def test_chunked_body_survives_chunk_and_size_line_boundaries_split_across_writes() -> None:
    parts = (
        CHUNKED + b"5\r\nhel",
        b"lo\r\n1",
        b"0;name=value\r\n0123456789",
        b"abcdef\r",
        b"\n3\r\nend\r\n0",
        b"\r\n\r\n",
    )
    async with serve(replies(*parts)) as (server, pool):
        for _ in range(2):
            assert (await fetch(pool))[1] == b"hello0123456789abcdefend"
        assert server.accepted == 1


async def test_chunked_trailers_are_consumed_so_the_connection_is_reused() -> None:
    parts = (CHUNKED + b"4\r\nbody\r\n0\r\n", b"X-Checksum: abc\r\nX-Ot", b"her: 1\r\n", b"\r\n")
    async with serve(replies(*parts)) as (server, pool):
        for _ in range(2):
            assert (await fetch(pool))[1] == b"body"
        assert server.accepted == 1


async def test_interim_100_continue_and_103_early_hints_are_skipped_for_the_real_head() -> None:
    parts = (
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\n",
        b"Content-Length: 2\r\n\r\nok",
    )
    async with serve(replies(*parts)) as (_, pool):
        resp, body = await fetch(pool, "POST")
        assert (resp.status, body, "link" in resp.headers) == (201, b"ok", False)


@pytest.mark.parametrize(
    ("head", "server_closes"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 12\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\n\r\n", True),
    ],
    ids=["connection-close", "http10-length", "http10-until-close", "http11-until-close"],
)
async def test_responses_without_keep_alive_are_read_whole_and_their_connection_is_never_reused(
    head: bytes, server_closes: bool
) -> None:
    async with serve(replies(head + b"first ", b"second", close=server_closes)) as (server, pool):
        for _ in range(2):
            assert (await fetch(pool))[1] == b"first second"
            assert pool.idle_connections == 0
        assert server.accepted == 2
        await until(lambda: server.open == 0)  # the client closed the connections the server left open


@pytest.mark.parametrize(
    ("method", "head"),
    [
        ("DELETE", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    ],
    ids=["204", "304", "head"],
)
async def test_bodiless_responses_end_at_the_head_and_keep_the_connection(method: str, head: bytes) -> None:
    async with serve(replies(head)) as (server, pool):
        for _ in range(2):
            assert (await fetch(pool, method))[1] == b""
        assert server.accepted == 1


@pytest.mark.parametrize("parts", [(OK + b"EXTRA",), (OK, b"EXTRA")], ids=["same-write", "later-write"])
async def test_bytes_after_a_complete_response_deliver_the_body_but_retire_the_connection(
    parts: tuple[bytes, ...],
) -> None:
    async with serve(replies(*parts)) as (server, pool):
        assert (await fetch(pool))[1] == b"hello"
        await until(lambda: pool.idle_connections == 0)
        assert (await fetch(pool))[1] == b"hello"
        assert server.accepted == 2


async def test_a_second_answer_in_the_same_write_delivers_the_first_body_and_retires_the_connection() -> None:
    async with serve(replies(OK + OK)) as (server, pool):
        assert (await fetch(pool))[1] == b"hello"
        assert pool.idle_connections == 0
        assert (await fetch(pool))[1] == b"hello"
        assert server.accepted == 2


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 70_000 + b"\r\n\r\n", "head too large"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 70_000, "head too large"),
        (CHUNKED + b"0\r\n" + b"X-Trailer: " + b"x" * 70_000 + b"\r\n\r\n", "trailer too long"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "switched protocols",
        ),
        (b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n", "framing"),
    ],
    ids=["head-too-large", "head-never-ends", "trailer-too-long", "upgrade", "bad-header-name"],
)
async def test_a_head_the_gateway_cannot_take_raises_response_error_and_frees_the_slot(
    answer: bytes, message: str
) -> None:
    async with serve(replies(answer)) as (server, pool):
        with pytest.raises(ResponseError, match=message):
            await fetch(pool)
        assert pool.in_use == 0 and pool.idle_connections == 0
        await until(lambda: server.open == 0)


@pytest.mark.parametrize(
    "parts",
    [
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",),
    ],
    ids=["real-head-in-its-own-read", "real-head-in-the-interim-read"],
)
async def test_a_real_head_after_an_http_1_interim_one_has_its_own_version_checked(parts: tuple[bytes, ...]) -> None:
    # The answer's first bytes say HTTP/1. only for the interim head: the real one's version is llhttp's to tell.
    async with serve(replies(*parts)) as (server, pool):
        with pytest.raises(ResponseError, match=r"not HTTP/1.x"):
            await fetch(pool, "POST")
        assert pool.in_use == 0 and pool.idle_connections == 0
        await until(lambda: server.open == 0)


@pytest.mark.parametrize(
    "status_line",
    [
        b"HTTP/1.1 2x0 Oops",
        b"HTTP/1.1 200OK",
        b"HTTP/2 200",
        b"HTTP/2.0 200 OK",
        b"HTTP/0.9 200 OK",
        b"SSH-2.0-OpenSSH_9.6",
    ],
)
async def test_malformed_status_line_raises_response_error_and_frees_the_slot(status_line: bytes) -> None:
    async with serve(replies(status_line + b"\r\nContent-Length: 0\r\n\r\n")) as (server, pool):
        with pytest.raises(ResponseError, match=r"not HTTP/1.x"):
            await fetch(pool)
        assert pool.in_use == 0 and pool.idle_connections == 0
        await until(lambda: server.open == 0)


@pytest.mark.parametrize(
    "parts",
    [
        (CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"),
        (CHUNKED, b"5\r\nhelloXX0\r\n\r\n"),
        (CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n",),
        (CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n",),
        (CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n",),
    ],
    ids=["not-hex", "no-crlf-after-data", "negative", "0x-prefix", "plus-sign"],
)
async def test_broken_chunk_framing_raises_response_error_and_closes_the_connection(parts: tuple[bytes, ...]) -> None:
    async with serve(replies(*parts)) as (server, pool):
        with pytest.raises(ResponseError, match="chunk"):
            await fetch(pool)
        assert pool.in_use == 0 and pool.idle_connections == 0
        await until(lambda: server.open == 0)


@pytest.mark.parametrize(
    "lengths",
    [
        b"Content-Length: +5",
        b"Content-Length: 5_0",
        b"Content-Length: -1",
        b"Content-Length: 5, 5",
        b"Content-Length: 5\r\nContent-Length: 5",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5",
    ],
    ids=["plus", "underscore", "negative", "list", "twice", "with-chunked"],
)
async def test_content_length_that_is_not_one_bare_number_raises_response_error(lengths: bytes) -> None:
    async with serve(replies(b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\n\r\nhello")) as (server, pool):
        with pytest.raises(ResponseError, match="Content-Length"):
            await fetch(pool)
        assert pool.in_use == 0
        await until(lambda: server.open == 0)


async def _partial_then_incomplete(pool: UpstreamHttp) -> None:
    """A GET whose answer gives b"partial", then fails as incomplete."""
    resp = await pool.request("GET", "/", [])
    try:
        assert await resp.readany() == b"partial"
        with pytest.raises(ResponseError, match="before the response was complete"):
            await resp.readany()
    finally:
        resp.release()


async def test_close_before_content_length_is_met_raises_after_the_bytes_that_arrived() -> None:
    async with serve(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"partial", close=True)) as (_, pool):
        await _partial_then_incomplete(pool)
        assert pool.in_use == 0 and pool.idle_connections == 0


async def test_a_reset_ends_a_body_without_length_as_an_error_not_as_its_end() -> None:
    async def reset_mid_body(
        server: ScriptedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST, not FIN
        writer.transport.abort()

    async with serve(reset_mid_body) as (_, pool):
        await _partial_then_incomplete(pool)
        assert pool.in_use == 0


@pytest.mark.parametrize(
    ("coding", "compress"), [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)]
)
async def test_compressed_bodies_are_inflated_across_split_writes(
    coding: str, compress: Callable[[bytes], bytes]
) -> None:
    plain = b'{"choices": [{"message": {"content": "hello"}}]}' * 500
    packed = compress(plain)
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: {len(packed)}\r\n\r\n".encode()
    third = len(packed) // 3
    async with serve(replies(head + packed[:5], packed[5:third], packed[third:])) as (server, pool):
        for _ in range(2):
            assert (await fetch(pool))[1] == plain
        assert server.accepted == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!",
            "corrupt compressed body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 5\r\n\r\nhello",
            "unsupported content-encoding 'br'",
        ),
    ],
    ids=["corrupt-gzip", "unsupported-encoding"],
)
async def test_a_body_that_cannot_be_decoded_raises_closes_the_connection_and_frees_the_slot(
    answer: bytes, message: str
) -> None:
    async with serve(replies(answer)) as (server, pool):
        with pytest.raises(ResponseError, match=message):
            await fetch(pool)
        assert pool.in_use == 0 and pool.idle_connections == 0
        await until(lambda: server.open == 0)


async def test_compressed_body_cut_short_inside_complete_framing_raises_response_error() -> None:
    packed = gzip.compress(b"x" * 5000)[:-12]  # the HTTP body is whole, the gzip stream is not
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(packed)}\r\n\r\n".encode()
    async with serve(replies(head + packed)) as (_, pool):
        with pytest.raises(ResponseError, match="ended before the compressed stream did"):
            await fetch(pool)
        assert pool.in_use == 0 and pool.idle_connections == 0


# ---------------------------------------------------------------- the request


async def test_request_head_carries_method_prefixed_path_host_with_port_headers_and_length() -> None:
    async with serve(replies(OK), path="/v1/") as (server, pool):
        await fetch(
            pool, "POST", "/chat/completions?x=1", [("Authorization", "Bearer k"), ("X-Trace", "t1")], b'{"a":1}'
        )
        await fetch(pool, "GET", "/models")
        await fetch(pool, "POST", "/empty")
        host = f"Host: 127.0.0.1:{server.port}\r\n".encode()
        assert server.requests == [
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
            + host
            + b'Authorization: Bearer k\r\nX-Trace: t1\r\nContent-Length: 7\r\n\r\n{"a":1}',
            b"GET /v1/models HTTP/1.1\r\n" + host + b"\r\n",
            b"POST /v1/empty HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n\r\n",
        ]


async def test_connect_to_a_closed_port_raises_connect_error_and_frees_the_slot() -> None:
    pool = UpstreamHttp(f"http://127.0.0.1:{refusing_port()}", max_connections=1)
    with pytest.raises(ConnectError) as caught:
        await pool.request("GET", "/", [])
    assert isinstance(caught.value.os_error, ConnectionRefusedError)
    assert pool.in_use == 0
    await pool.close()


async def test_a_traced_client_writes_the_trace_context_and_keeps_the_options_it_was_given() -> None:
    def inject(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [*headers, ("traceparent", "00-1-2-01")]

    async with serve(replies(OK)) as (server, _):
        traced = TracedHttp(
            f"http://127.0.0.1:{server.port}", inject=inject, max_connections=3, keepalive=7.0, connect_timeout=0.5
        )
        assert (traced.max_connections, traced.keepalive, traced.connect_timeout) == (3, 7.0, 0.5)
        response = await traced.request("GET", "/models", [("X-Id", "r1")])
        assert response.status == 200
        response.release()
        await traced.close()
        assert server.requests[-1].endswith(b"X-Id: r1\r\ntraceparent: 00-1-2-01\r\n\r\n")


# ---------------------------------------------------------------- the pool


async def test_connection_closed_by_the_server_while_idle_is_not_reused() -> None:
    async with serve(replies(OK, close=True)) as (server, pool):
        assert (await fetch(pool))[1] == b"hello"
        await until(lambda: pool.idle_connections == 0)  # the client noticed the hang-up
        assert (await fetch(pool))[1] == b"hello"
        assert server.accepted == 2


async def test_pool_of_two_serves_five_concurrent_requests_on_at_most_two_connections() -> None:
    async with serve(replies(OK[:-5], b"hello", pause=0.05), max_connections=2) as (server, pool):
        results = await asyncio.gather(*(fetch(pool) for _ in range(5)))
        assert [body for _, body in results] == [b"hello"] * 5
        assert server.accepted == 2 and server.most_open == 2
        assert pool.in_use == 0 and pool.idle_connections == 2


async def test_a_waiter_cancelled_just_after_its_wake_up_passes_the_slot_on() -> None:
    async with serve(replies(OK), max_connections=1) as (server, pool):
        held = await pool.request("GET", "/", [])
        first, second = (asyncio.create_task(fetch(pool)) for _ in range(2))
        await asyncio.sleep(0.01)  # both wait for the slot
        await held.read()
        held.release()  # wakes the first waiter...
        first.cancel()  # ...which is cancelled before it runs
        assert (await second)[1] == b"hello"
        assert first.cancelled() and pool.in_use == 0 and server.accepted == 1


@pytest.mark.parametrize("stage", ["head", "body"])
async def test_cancelling_a_request_closes_its_connection_at_once_and_frees_its_slot(stage: str) -> None:
    loop = asyncio.get_running_loop()
    reached = asyncio.Event()  # the client waits for the stage under test
    eof_at: list[float] = []

    async def stall_first(server: ScriptedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepted > 1:
            return await replies(OK)(server, reader, writer)
        await read_request(reader)
        if stage == "head":
            reached.set()
        else:
            await send(writer, [b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n", b"first bytes"])
        assert await reader.read() == b""
        eof_at.append(loop.time())

    async def read_body(pool: UpstreamHttp) -> None:
        resp = await pool.request("GET", "/", [])
        try:
            while await resp.readany():
                reached.set()
        finally:
            resp.release()

    async with serve(stall_first, max_connections=1) as (server, pool):
        task = asyncio.create_task(read_body(pool))
        await reached.wait()
        task.cancel()
        cancelled_at = loop.time()
        await until(lambda: bool(eof_at), timeout=1.0)
        assert eof_at[0] - cancelled_at < 0.5 and task.cancelled()
        assert pool.in_use == 0 and pool.idle_connections == 0
        assert (await fetch(pool))[1] == b"hello"  # the only slot is free again
        assert server.accepted == 2


async def test_idle_sweep_closes_connections_idle_longer_than_keepalive_since_their_last_use() -> None:
    async with serve(replies(OK), keepalive=0.2) as (server, pool):
        await fetch(pool)
        await asyncio.sleep(0.1)
        await fetch(pool)  # reused: its idle time starts again
        await asyncio.sleep(0.12)  # past keepalive since the first use, not since the second
        assert server.open == 1 and pool.idle_connections == 1
        await until(lambda: server.open == 0, timeout=1.0)
        assert pool.idle_connections == 0 and server.accepted == 1


async def test_large_body_arrives_intact_through_readany_while_flow_control_bounds_the_buffer() -> None:
    payload = os.urandom(8 << 20)
    step = 256 << 10

    async def stream(server: ScriptedUpstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
            for at in range(0, len(payload), step):
                writer.write(payload[at : at + step])
                await writer.drain()

    async with serve(stream) as (_, pool):
        resp = await pool.request("GET", "/", [])
        pieces = []
        try:
            while piece := await resp.readany():
                pieces.append(piece)
                await asyncio.sleep(0.01)  # a slow client downstream
        finally:
            resp.release()
        assert b"".join(pieces) == payload
        # Reading stops past the high-water mark: at most one socket read (256 KiB) more is buffered.
        assert max(map(len, pieces)) <= upstream_http._HIGH_WATER + (256 << 10)
        assert pool.idle_connections == 1


async def test_closing_the_pool_closes_idle_connections_and_those_released_later() -> None:
    async with serve(replies(OK, pause=0.02)) as (server, pool):
        await asyncio.gather(fetch(pool), fetch(pool))
        assert pool.idle_connections == 2
        in_use = await pool.request("GET", "/", [])  # takes one of them
        await pool.close()
        await until(lambda: server.open == 1)
        assert await in_use.read() == b"hello"
        in_use.release()
        await until(lambda: server.open == 0)
        assert pool.idle_connections == 0
        with pytest.raises(ConnectError, match="closed"):
            await pool.request("GET", "/", [])


# ---------------------------------------------------------------- the production event loop

UVLOOP_SCENARIOS = {
    "split-chunks": test_chunked_body_survives_chunk_and_size_line_boundaries_split_across_writes,
    "cancel-mid-body": functools.partial(
        test_cancelling_a_request_closes_its_connection_at_once_and_frees_its_slot, "body"
    ),
    "flow-control": test_large_body_arrives_intact_through_readany_while_flow_control_bounds_the_buffer,
}


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS.values(), ids=UVLOOP_SCENARIOS.keys())
def test_scenario_holds_under_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A certificate for localhost, signed by itself (openssl on the test machine)."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.process
async def test_https_upstream_is_verified_by_default_and_served_when_its_certificate_is_trusted(
    self_signed: tuple[str, str],
) -> None:
    import ssl

    cert, key = self_signed
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
            await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        untrusted = UpstreamHttp(f"https://localhost:{port}/v1")
        with pytest.raises(ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await untrusted.request("GET", "/models", [])
        assert untrusted.in_use == 0
        await untrusted.close()

        trusted = UpstreamHttp(f"https://localhost:{port}/v1", ssl_context=ssl.create_default_context(cafile=cert))
        resp = await trusted.request("GET", "/models", [])
        try:
            assert resp.status == 200 and await resp.read() == b"hello"
        finally:
            resp.release()
        assert trusted.idle_connections == 1
        await trusted.close()
    finally:
        server.close()
        await server.wait_closed()
