"""The Redis connections' read path: replies parsed as they arrive, whole round trips handed over, a connection out
of step with its commands never reused, and pipelines written in the tick that filled them answered without a task."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

from tests.support.processes import free_port
from tests.support.redis import RedisServer
from tollgate.clock import SystemClock
from tollgate.errors import StoreError, StoreTimeout
from tollgate.limiter.store import BreakerSettings, RedisEngine, ScriptCall
from tollgate.limiter.store.redis_engine import EAGER_BATCH
from tollgate.limiter.store.redis_pipe import RedisPipe

ADMIT_ARGS = ["gcra", 10, 1000, 1, "", "0"]


class FakeTransport:
    """What a pipe writes, and whether it was closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return None


class FakeConn:
    """redis-py's connection as the pipe sees it."""

    def __init__(self) -> None:
        self._writer: object | None = object()
        self._reader: object | None = object()


class Sink:
    def __init__(self) -> None:
        self.replies: list[list[Any]] = []
        self.errors: list[BaseException] = []

    def replied(self, replies: list[Any]) -> None:
        self.replies.append(replies)

    def failed(self, exc: BaseException) -> None:
        self.errors.append(exc)


def pipe_of() -> tuple[RedisPipe, FakeTransport, FakeConn]:
    transport, conn = FakeTransport(), FakeConn()
    return RedisPipe(conn, transport, asyncio.get_running_loop(), BaseParser.parse_error), transport, conn


def plain(reply: Any) -> Any:
    """A reply comparable by value: an error reply as its class and message, at any depth."""
    if isinstance(reply, Exception):
        return (type(reply), str(reply))
    if isinstance(reply, list):
        return [plain(r) for r in reply]
    return reply


# Replies of every shape the scripts and the engine meet: integers, bulk strings, nested arrays, nil, errors.
REPLIES = (
    b":1\r\n",
    b":-42\r\n",
    b"$5\r\nhello\r\n",
    b"$-1\r\n",
    b"*3\r\n:1\r\n:0\r\n$3\r\nabc\r\n",
    b"*2\r\n*2\r\n:7\r\n:8\r\n*0\r\n",
    b"+OK\r\n",
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
    b"-ERR Error running script (call to f_x): @user_script:1: boom\r\n",
    b"*2\r\n:5\r\n-ERR nested\r\n",
)


async def test_replies_cut_anywhere_are_handed_over_whole_and_in_order_as_one_parse_of_them_gives() -> None:
    rng = random.Random(7)
    for _ in range(300):
        chosen = [rng.choice(REPLIES) for _ in range(rng.randint(1, 12))]
        stream = b"".join(chosen)
        expected = hiredis.Reader(replyError=BaseParser.parse_error)
        expected.feed(stream)
        want = [expected.gets() for _ in chosen]
        pipe, _, _ = pipe_of()
        sink = Sink()
        pipe.expect(len(chosen), sink)
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        for i, piece in enumerate(pieces):
            pipe.data_received(piece)
            if i < len(pieces) - 1:
                assert sink.replies == [], "handed over before all replies were in"
        assert len(sink.replies) == 1 and not sink.errors
        assert plain(sink.replies[0]) == plain(want)
        assert pipe.usable()


async def test_error_replies_are_redis_py_s_exception_classes() -> None:
    pipe, _, _ = pipe_of()
    sink = Sink()
    pipe.expect(2, sink)
    pipe.data_received(b"-NOSCRIPT No matching script.\r\n-ERR Function not found\r\n")
    first, second = sink.replies[0]
    assert type(first) is NoScriptError and type(second) is ResponseError
    assert "Function not found" in str(second)


async def test_a_reply_no_command_asked_for_closes_the_connection() -> None:
    pipe, transport, conn = pipe_of()
    pipe.data_received(b":1\r\n")
    assert transport.closed and not pipe.usable()
    assert conn._writer is None and conn._reader is None  # redis-py's connection forgot its transport too


async def test_more_replies_than_commands_fail_the_round_trip_and_close_the_connection() -> None:
    pipe, transport, _ = pipe_of()
    sink = Sink()
    pipe.expect(1, sink)
    pipe.data_received(b":1\r\n:2\r\n")
    assert sink.replies == [] and len(sink.errors) == 1 and isinstance(sink.errors[0], InvalidResponse)
    assert transport.closed and not pipe.usable()


async def test_bytes_that_are_not_resp_fail_the_round_trip_and_close_the_connection() -> None:
    pipe, transport, _ = pipe_of()
    sink = Sink()
    pipe.expect(1, sink)
    pipe.data_received(b"HTTP/1.1 400 Bad Request\r\n")
    assert sink.replies == [] and len(sink.errors) == 1 and isinstance(sink.errors[0], InvalidResponse)
    assert transport.closed


async def test_a_lost_connection_fails_the_waiting_round_trip_once() -> None:
    pipe, _, _ = pipe_of()
    sink = Sink()
    pipe.expect(2, sink)
    pipe.data_received(b":1\r\n")
    pipe.connection_lost(ConnectionResetError("reset by peer"))
    pipe.connection_lost(None)
    assert sink.replies == [] and len(sink.errors) == 1 and isinstance(sink.errors[0], RedisConnectionError)
    assert not pipe.usable()


async def test_an_abandoned_round_trip_hears_nothing_more_and_its_connection_is_closed() -> None:
    pipe, transport, _ = pipe_of()
    sink = Sink()
    pipe.expect(1, sink)
    pipe.abandon()
    pipe.connection_lost(None)
    assert sink.replies == [] and sink.errors == [] and transport.closed


async def test_a_reply_parsed_but_not_handed_over_is_an_answer_waiting() -> None:
    pipe, _, _ = pipe_of()
    sink = Sink()
    pipe.expect(2, sink)
    assert not pipe.answer_waiting()
    pipe.data_received(b":1\r\n")
    assert pipe.answer_waiting()  # one of two replies in: the budget is extended, not spent
    pipe.data_received(b":2")
    assert pipe.answer_waiting()  # half a reply in hiredis's buffer
    pipe.data_received(b"\r\n")
    assert sink.replies == [[1, 2]] and not pipe.answer_waiting()


@pytest.mark.process
async def test_a_pipeline_written_in_its_tick_is_answered_without_a_task(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    try:
        await engine.start()
        calls = [asyncio.ensure_future(engine.run("admit", [f"k{i}"], ADMIT_ARGS)) for i in range(EAGER_BATCH)]
        await asyncio.sleep(0)  # the callers queue their calls; the sixteenth writes the pipeline
        assert engine.stats.round_trips == 2  # start()'s script load, then this pipeline
        assert not engine._in_flight, "no task reads the replies"
        replies = await asyncio.gather(*calls)
        assert all(r[0] == 1 for r in replies)
        assert len(engine._idle) >= 1 and not engine._lent
    finally:
        await engine.close()


@pytest.mark.process
async def test_a_connection_the_store_closed_while_idle_is_not_written_on(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    admin = redis_standalone.client()
    others = {c["id"] for c in admin.client_list()}
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, warm_connections=1)
    try:
        await engine.start()
        (pipe,) = engine._idle
        for client in admin.client_list():
            if client["id"] not in others and client["cmd"] != "client|list":
                admin.client_kill_filter(_id=client["id"])
        for _ in range(100):  # the loop hears of the close
            if not pipe.usable():
                break
            await asyncio.sleep(0.01)
        assert not pipe.usable()
        failures = engine.stats.failures
        assert (await engine.run("admit", ["k"], ADMIT_ARGS))[0] == 1  # a new connection, no failed call
        assert engine.stats.failures == failures and pipe not in engine._idle
    finally:
        admin.close()
        await engine.close()


@pytest.mark.process
async def test_closing_the_engine_leaves_no_redis_py_connection_open(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, warm_connections=4)
    await engine.start()
    await asyncio.gather(*(engine.run("admit", [f"k{i}"], ADMIT_ARGS) for i in range(EAGER_BATCH * 2)))
    pipes = list(engine._idle)
    assert pipes
    await engine.close()
    assert all(not p.conn.is_connected and not p.usable() for p in pipes)


@pytest.mark.process
async def test_a_call_the_engine_cannot_answer_before_closing_gets_a_store_error(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    admin = redis_standalone.client()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    try:
        await engine.start()
        admin.client_pause(300)
        call = asyncio.ensure_future(engine.run("admit", ["k"], ADMIT_ARGS))
        await asyncio.sleep(0.02)  # written, not answered
        assert engine._lent
        await engine.close()
        with pytest.raises(StoreError, match="closed"):
            await call
    finally:
        admin.close()


@pytest.fixture(scope="module")
def redis_tls_unix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, Path, Path]]:
    """A redis-server with a password, a TLS port (a self-signed certificate) and a unix socket beside its port."""
    folder = tmp_path_factory.mktemp("redis-tls")
    cert, key, sock = folder / "cert.pem", folder / "key.pem", folder / "redis.sock"
    make_cert = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    make_cert += ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(make_cert, check=True, capture_output=True)
    tls_port = free_port()
    server = RedisServer(
        extra_args=(
            "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
            "--unixsocket", str(sock), "--unixsocketperm", "700",
        )
    )  # fmt: skip
    server.start()
    try:
        yield server, tls_port, cert, sock
    finally:
        server.stop()


@pytest.mark.process
@pytest.mark.parametrize("scheme", ["rediss", "unix"])
async def test_tls_and_unix_socket_connections_are_read_by_the_pipe_after_redis_py_s_handshake(
    redis_tls_unix: tuple[RedisServer, int, Path, Path], scheme: str
) -> None:
    server, tls_port, cert, sock = redis_tls_unix
    admin = server.client()
    try:
        admin.config_set("requirepass", "s3cret")
        url = (
            f"rediss://:s3cret@127.0.0.1:{tls_port}/2?ssl_ca_certs={cert}"
            if scheme == "rediss"
            else f"unix://:s3cret@{sock}?db=2"
        )
        engine = RedisEngine(url, clock=SystemClock(), timeout=2.0, warm_connections=2)
        try:
            await engine.start()
            fast = await asyncio.gather(*(engine.run("admit", [f"k{i}"], ADMIT_ARGS) for i in range(EAGER_BATCH * 2)))
            slow = await engine.run_batch([engine_call(f"b{i}") for i in range(3)])  # the asynchronous way
            assert all(r[0] == 1 for r in [*fast, *slow]) and engine.stats.failures == 0
            assert all(p.conn.is_connected for p in engine._idle)
        finally:
            await engine.close()
        with server.client(password="s3cret", db=2) as db2:
            assert db2.exists("k0") or db2.dbsize() > 0  # the AUTH and SELECT of the handshake held
    finally:
        with server.client(password="s3cret") as c:
            c.config_set("requirepass", "")
        admin.close()


def engine_call(key: str) -> ScriptCall:
    return ScriptCall("admit", [key], ADMIT_ARGS)


@pytest.mark.process
async def test_pipelines_on_a_paused_store_each_time_out_at_their_own_budget(own_redis: RedisServer) -> None:
    """One timer keeps every fast-path budget: a pipeline written later is failed at its own deadline, not at the
    first one's, and one answered in time is not failed when the timer reaches it."""
    budget = 0.2
    engine = RedisEngine(own_redis.url, clock=SystemClock(), timeout=budget, breaker=BreakerSettings(failures=100))
    loop = asyncio.get_running_loop()
    try:
        await engine.start()
        answered = asyncio.ensure_future(engine.run("admit", ["early"], ADMIT_ARGS))
        assert (await answered)[0] == 1  # answered in time: its budget's turn comes while the others wait
        own_redis.pause()
        failed_at: list[float] = []

        async def timed_call(key: str) -> None:
            with pytest.raises(StoreTimeout):
                await engine.run("admit", [key], ADMIT_ARGS)
            failed_at.append(loop.time())

        start = loop.time()
        first = asyncio.ensure_future(timed_call("first"))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(timed_call("second"))
        await asyncio.gather(first, second)
        assert engine.stats.round_trips >= 3 and not engine._in_flight  # both on the fast path
        first_at, second_at = failed_at[0] - start, failed_at[1] - start
        assert budget <= first_at < budget + 0.08, first_at
        assert budget + 0.1 <= second_at < budget + 0.1 + 0.08, second_at
    finally:
        own_redis.resume()
        await engine.close()
    assert not engine._budgets._due


@pytest.mark.process
async def test_answered_pipelines_waiting_for_the_budget_timer_hold_none_of_their_calls(
    redis_standalone: RedisServer,
) -> None:
    """With a long store budget, answered pipelines wait in the timer's queue until it reaches them: each lets go of
    its calls and their futures, so the queue costs a small object a round trip, not the calls' memory."""
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=30.0)
    try:
        await engine.start()
        for wave in range(20):
            await asyncio.gather(*(engine.run("admit", [f"k{wave}.{i}"], ADMIT_ARGS) for i in range(EAGER_BATCH)))
        waiting = list(engine._budgets._due)
        assert len(waiting) >= 20
        assert all(trip.over and trip.batch == [] for trip in waiting)
    finally:
        await engine.close()
    assert not engine._budgets._due


async def test_a_transport_that_cannot_take_a_write_is_the_store_s_connection_error() -> None:
    pipe, transport, _ = pipe_of()

    def refuse(data: bytes) -> None:
        raise RuntimeError("transport closed")

    transport.write = refuse  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError, match="cannot write to the store"):
        pipe.write(b"*1\r\n$4\r\nPING\r\n")


@pytest.mark.process
async def test_a_connection_closing_as_its_replies_come_is_answered_then_closed_not_reused(
    redis_standalone: RedisServer,
) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, warm_connections=1)
    try:
        await engine.start()
        (pipe,) = engine._idle

        class ClosingAfterWrite:
            """The connection's transport, which says it is closing once a pipeline went out on it."""

            def __init__(self, transport: Any) -> None:
                self.transport = transport
                self.wrote = False

            def write(self, data: bytes) -> None:
                self.transport.write(data)
                self.wrote = True

            def is_closing(self) -> bool:
                return self.wrote or self.transport.is_closing()

            def __getattr__(self, name: str) -> Any:
                return getattr(self.transport, name)

        pipe.transport = ClosingAfterWrite(pipe.transport)
        assert (await engine.run("admit", ["k1"], ADMIT_ARGS))[0] == 1  # answered
        assert pipe not in engine._idle and pipe.conn._writer is None  # closed, not reused
        assert (await engine.run("admit", ["k2"], ADMIT_ARGS))[0] == 1  # on a new connection
        assert engine.stats.failures == 0
    finally:
        await engine.close()
