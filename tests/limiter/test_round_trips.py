"""Fewer round trips: a tick's admissions share pipelines, sent as they fill; keys over their limit are refused locally."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.redis import RedisServer
from tollgate.clock import ManualClock, SystemClock
from tollgate.errors import StoreError
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import BreakerSettings, RedisEngine
from tollgate.limiter.store.redis_engine import EAGER_BATCH, _Slots


@pytest.fixture
async def clock_and_limiter(redis_standalone: RedisServer) -> AsyncIterator[tuple[ManualClock, Limiter]]:
    redis_standalone.flushall()
    clock = ManualClock()  # times only the local cache; Redis keeps its own time
    lim = Limiter({"r": RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)}, clock=clock)
    try:
        yield clock, lim
    finally:
        await lim.close()


def rpm(limit: int, cost: int = 1, **kw: object) -> LimitSpec:
    return LimitSpec(name="rpm", kind="gcra", limit=limit, window_ms=60_000, cost=cost, tenant="acme", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("coalesce", "round_trips"), [(True, 7), (False, 100)], ids=["coalesced", "one-call-each"])
async def test_admissions_issued_in_one_tick_share_pipelines_of_eager_batch_calls(
    redis_standalone: RedisServer, coalesce: bool, round_trips: int
) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, coalesce=coalesce, max_connections=200)
    limiter = Limiter({"r": engine}, clock=SystemClock(), cache_size=0)
    try:
        await limiter.admit([LimitSpec(name="warm", kind="gcra", limit=1)])  # connect and load the scripts
        before = engine.stats.round_trips
        specs = [
            rpm(50),
            LimitSpec(name="tpm", kind="sliding_window", limit=10**6, window_ms=60_000, cost=30, tenant="acme"),
        ]
        decisions = await asyncio.gather(*(limiter.admit(specs) for _ in range(100)))
        assert sum(d.allowed for d in decisions) == 50  # split into pipelines, every admission is still atomic
        assert EAGER_BATCH == 16 and round_trips == (
            7 if coalesce else 100
        )  # 100 = 6 full pipelines + 4 at the tick's end
        assert engine.stats.round_trips - before == round_trips
    finally:
        await limiter.close()


async def test_a_full_pipeline_reaches_redis_before_the_tick_that_filled_it_ends(redis_standalone: RedisServer) -> None:
    """The event loop is blocked right after the tick's tasks queued EAGER_BATCH calls: only a write made in that tick can have reached Redis.

    A pipeline's admissions reach Redis as one admit.lua batch (ADMIT_BATCH), one FCALL."""
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    limiter = Limiter({"r": engine}, clock=SystemClock(), cache_size=0)
    admin = redis_standalone.client()
    try:
        await limiter.admit([LimitSpec(name="warm", kind="gcra", limit=1)])
        admin.config_resetstat()
        tasks = [asyncio.ensure_future(limiter.admit([rpm(1000)])) for _ in range(EAGER_BATCH + 3)]
        await asyncio.sleep(0)  # every task took its first step; the end-of-tick flush has not run yet
        deadline = time.monotonic() + 2
        while admin.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the loop on purpose
        assert admin.info("commandstats")["cmdstat_fcall"]["calls"] == 1  # the full pipeline's batch, alone
        decisions = await asyncio.gather(*tasks)
        assert all(d.allowed for d in decisions)
        assert admin.info("commandstats")["cmdstat_fcall"]["calls"] == 2  # and the 3 left at the tick's end
    finally:
        admin.close()
        await limiter.close()


async def test_pipelines_never_use_more_connections_than_max_connections(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, max_connections=2)
    limiter = Limiter({"r": engine}, clock=SystemClock(), cache_size=0)
    admin = redis_standalone.client()
    try:
        decisions = await asyncio.gather(*(limiter.admit([rpm(150)]) for _ in range(EAGER_BATCH * 12)))
        assert sum(d.allowed for d in decisions) == 150
        names = [c for c in admin.client_list() if c["cmd"] != "client|list"]
        assert 1 <= len(names) <= 2
    finally:
        admin.close()
        await limiter.close()


async def test_connections_killed_while_idle_fail_one_pipeline_then_the_engine_reconnects(
    redis_standalone: RedisServer,
) -> None:
    redis_standalone.flushall()
    # Each dead connection fails its pipeline once; a breaker that opens on 3 failures would hide the recovery.
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, breaker=BreakerSettings(failures=100))
    limiter = Limiter({"r": engine}, clock=SystemClock(), cache_size=0)
    admin = redis_standalone.client()
    try:
        await asyncio.gather(*(limiter.admit([rpm(10_000)]) for _ in range(EAGER_BATCH * 3)))  # a few idle connections
        admin.client_kill_filter(_type="normal", skipme=True)
        first = await asyncio.gather(*(limiter.admit([rpm(10_000)]) for _ in range(EAGER_BATCH * 3)))
        assert all(
            d.allowed or d.degraded for d in first
        )  # a dead connection degrades its calls (fail mode), never hangs
        assert any(d.degraded for d in first)
        again = await asyncio.gather(*(limiter.admit([rpm(10_000)]) for _ in range(EAGER_BATCH * 3)))
        assert all(d.allowed and not d.degraded for d in again)
    finally:
        admin.close()
        await limiter.close()


async def test_a_connection_that_refuses_the_write_is_dropped_and_its_calls_go_the_asynchronous_way(
    redis_standalone: RedisServer,
) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    try:
        await engine.run("admit", ["warm"], ["gcra", 10, 1000, 1, "", "0"])
        (conn,) = engine._idle

        class Refusing:
            """The connection's transport, but its write raises, as a transport closed under us can."""

            def __init__(self, transport: Any) -> None:
                self.transport = transport

            def write(self, data: bytes) -> None:
                raise RuntimeError("transport closed")

            def __getattr__(self, name: str) -> Any:
                return getattr(self.transport, name)

        conn.transport = Refusing(conn.transport)
        replies = await asyncio.gather(
            *(engine.run("admit", [f"k{i}"], ["gcra", 10, 1000, 1, "", "0"]) for i in range(EAGER_BATCH))
        )
        assert all(r[0] == 1 for r in replies)
        assert conn not in engine._idle and engine.stats.failures == 0
    finally:
        await engine.close()


async def test_closing_the_engine_answers_calls_whose_pipeline_was_written(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    admin = redis_standalone.client()
    # The session's server may hold other tests' connections: only the ones opened from here on are this engine's.
    others = {c["id"] for c in admin.client_list()}
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    try:
        await engine.run("admit", ["warm"], ["gcra", 10, 1000, 1, "", "0"])
        assert [c for c in admin.client_list() if c["id"] not in others], "the engine's connections are seen"
        admin.client_pause(500)  # replies wait: the pipeline is written, not answered
        calls = [
            asyncio.ensure_future(engine.run("admit", [f"k{i}"], ["gcra", 10, 1000, 1, "", "0"]))
            for i in range(EAGER_BATCH)
        ]
        await asyncio.sleep(0.05)
        assert engine.stats.round_trips >= 2
        await engine.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results)
        # Once the pause is over (0.5 s) the server sees the closed engine's sockets go: none is left behind. A
        # loaded machine may take a moment more to get there, so look until then rather than once.
        deadline = time.monotonic() + 5.0
        left = ["paused"]
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [c for c in admin.client_list() if c["id"] not in others and c["cmd"] != "client|list"]
        assert left == []
    finally:
        admin.close()


async def test_a_slot_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    slots = _Slots(1)
    assert slots.take_now() and not slots.take_now()
    second = asyncio.ensure_future(slots.take())
    third = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    slots.give()  # hands the slot to the second waiter ...
    second.cancel()  # ... which is cancelled before it runs
    await asyncio.sleep(0)
    await asyncio.wait_for(third, 1)
    assert second.cancelled() and slots.busy == 1
    slots.give()
    assert slots.busy == 0 and slots.take_now()


async def test_a_key_over_its_limit_is_refused_locally_until_its_retry_after(
    clock_and_limiter: tuple[ManualClock, Limiter],
) -> None:
    clock, limiter = clock_and_limiter
    engine = limiter.engine()
    assert (await limiter.admit([rpm(2)])).allowed
    assert (await limiter.admit([rpm(2)])).allowed
    first = await limiter.admit([rpm(2)])
    assert not first.allowed and not first.cached and 0 < first.retry_after_ms <= 30_000
    calls = engine.stats.calls
    for _ in range(10):
        d = await limiter.admit([rpm(2)])
        assert not d.allowed and d.cached and 0 < d.retry_after_ms <= first.retry_after_ms
    assert engine.stats.calls == calls and limiter.stats.cache_hits == 10
    clock.advance(first.retry_after_ms / 1000)
    await limiter.admit([rpm(2)])
    assert engine.stats.calls == calls + 1  # asked Redis again


async def test_the_cache_answers_only_for_costs_at_least_as_large_as_the_refused_one(
    clock_and_limiter: tuple[ManualClock, Limiter],
) -> None:
    _, limiter = clock_and_limiter
    assert (await limiter.admit([rpm(1000, 900)])).allowed
    assert not (await limiter.admit([rpm(1000, 500)])).allowed
    assert (await limiter.admit([rpm(1000, 600)])).cached
    small = await limiter.admit([rpm(1000, 50)])
    assert small.allowed and not small.cached


async def test_shadow_and_concurrency_limits_never_refuse_from_the_cache(
    clock_and_limiter: tuple[ManualClock, Limiter],
) -> None:
    _, limiter = clock_and_limiter
    shadow = rpm(1, shadow=True)
    lease = LimitSpec(name="streams", kind="concurrency", limit=1, window_ms=60_000, tenant="acme")
    held = await limiter.admit([lease])
    assert not (await limiter.admit([lease])).allowed
    assert held.lease is not None and await limiter.release(held.lease)
    assert (await limiter.admit([lease])).allowed
    for _ in range(3):
        assert (await limiter.admit([shadow])).allowed
    assert limiter.stats.cache_hits == 0


async def test_a_cancelled_slot_waiter_already_dropped_by_give_leaves_the_slots_consistent() -> None:
    slots = _Slots(1)
    assert slots.take_now()
    waiter = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    waiter.cancel()  # its future is cancelled now; the task runs its handler on the next step
    slots.give()  # meets the cancelled waiter first: drops it and frees the slot
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled() and slots.busy == 0 and slots.take_now()
