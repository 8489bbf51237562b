"""Fewer round trips: a tick's admissions share one pipeline; keys over their limit are refused locally."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.clock import ManualClock, SystemClock
from gateway.limiter import LimitSpec, Limiter
from gateway.store import RedisEngine
from tests.support.redis import RedisServer


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


@pytest.mark.parametrize(("coalesce", "round_trips"), [(True, 1), (False, 100)], ids=["coalesced", "one-call-each"])
async def test_admissions_issued_in_one_tick_share_one_round_trip(redis_standalone: RedisServer, coalesce: bool, round_trips: int) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, coalesce=coalesce, max_connections=200)
    limiter = Limiter({"r": engine}, clock=SystemClock(), cache_size=0)
    try:
        await limiter.admit([LimitSpec(name="warm", kind="gcra", limit=1)])  # connect and load the scripts
        before = engine.stats.round_trips
        specs = [rpm(50), LimitSpec(name="tpm", kind="sliding_window", limit=10**6, window_ms=60_000, cost=30, tenant="acme")]
        decisions = await asyncio.gather(*(limiter.admit(specs) for _ in range(100)))
        assert sum(d.allowed for d in decisions) == 50
        assert engine.stats.round_trips - before == round_trips
    finally:
        await limiter.close()


async def test_a_key_over_its_limit_is_refused_locally_until_its_retry_after(clock_and_limiter: tuple[ManualClock, Limiter]) -> None:
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


async def test_the_cache_answers_only_for_costs_at_least_as_large_as_the_refused_one(clock_and_limiter: tuple[ManualClock, Limiter]) -> None:
    _, limiter = clock_and_limiter
    assert (await limiter.admit([rpm(1000, 900)])).allowed
    assert not (await limiter.admit([rpm(1000, 500)])).allowed
    assert (await limiter.admit([rpm(1000, 600)])).cached
    small = await limiter.admit([rpm(1000, 50)])
    assert small.allowed and not small.cached


async def test_shadow_and_concurrency_limits_never_refuse_from_the_cache(clock_and_limiter: tuple[ManualClock, Limiter]) -> None:
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
