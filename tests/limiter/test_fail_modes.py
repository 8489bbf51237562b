"""When Redis hangs or dies: bounded waits, each limit's fail mode, the breaker, and recovery on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.support.redis import RedisServer
from tollgate.clock import ManualClock, SystemClock
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import BreakerSettings, CircuitBreaker, EmbeddedEngine, RedisEngine

BUDGET = 0.050
SLACK = 0.020


@pytest.fixture
async def limiter(own_redis: RedisServer) -> AsyncIterator[Limiter]:
    clock = SystemClock()
    engine = RedisEngine(
        own_redis.url, clock=clock, timeout=BUDGET, breaker=BreakerSettings(failures=3, open_seconds=0.3)
    )
    lim = Limiter({"redis": engine}, clock=clock, local=EmbeddedEngine(clock), instances=2)
    try:
        yield lim
    finally:
        await lim.close()


def spec(name: str, fail_mode: str, limit: int = 1000) -> LimitSpec:
    return LimitSpec(
        name=name, kind="sliding_window", limit=limit, window_ms=60_000, tenant="acme", fail_mode=fail_mode
    )  # type: ignore[arg-type]


async def timed(limiter: Limiter, s: LimitSpec) -> tuple[float, bool, bool]:
    t0 = time.perf_counter()
    d = await limiter.admit([s])
    return time.perf_counter() - t0, d.allowed, d.degraded


async def test_a_paused_redis_answers_each_admission_within_budget_with_its_fail_mode(
    own_redis: RedisServer, limiter: Limiter
) -> None:
    opened, closed, local = spec("open", "fail_open"), spec("closed", "fail_closed"), spec("local", "local", limit=8)
    for s in (opened, closed, local):
        assert not (await limiter.admit([s])).degraded  # connected, scripts loaded
    own_redis.pause()
    try:
        results = {"open": [], "closed": [], "local": []}  # type: dict[str, list[tuple[float, bool, bool]]]
        for _ in range(8):
            for s in (opened, closed, local):
                results[s.name].append(await timed(limiter, s))
        slowest = max(t for rows in results.values() for t, _, _ in rows)
        assert slowest <= BUDGET + SLACK, slowest
        assert all(degraded for rows in results.values() for _, _, degraded in rows)
        assert all(allowed for _, allowed, _ in results["open"])
        assert not any(allowed for _, allowed, _ in results["closed"])
        # local: the embedded engine with the limit divided by 2 instances, 8 // 2 = 4
        assert [allowed for _, allowed, _ in results["local"]] == [True] * 4 + [False] * 4
        engine = limiter.engine()
        assert engine.breaker.state == "open" and engine.stats.rejected_open > 0  # type: ignore[attr-defined]
    finally:
        own_redis.resume()
    deadline = time.monotonic() + 3.0
    while (await limiter.admit([opened])).degraded:
        assert time.monotonic() < deadline, "admissions did not go back to Redis after SIGCONT"
        await asyncio.sleep(0.05)
    assert limiter.engine().breaker.state == "closed"  # type: ignore[attr-defined]


async def test_a_degraded_decision_lists_its_limits_in_the_order_they_were_asked(
    own_redis: RedisServer, limiter: Limiter
) -> None:
    """The fail-mode answers and the local ones of a failed store come back in spec order (headers pair them by position)."""
    specs = (spec("local", "local", limit=8), spec("open", "fail_open"), spec("local2", "local", limit=8))
    own_redis.kill()
    d = await limiter.admit(specs)
    assert d.degraded and d.allowed
    assert [st.name for st in d.limits] == ["local", "open", "local2"]


async def test_the_open_breaker_refuses_at_once_instead_of_waiting(own_redis: RedisServer, limiter: Limiter) -> None:
    s = spec("open", "fail_open")
    await limiter.admit([s])
    own_redis.pause()
    try:
        for _ in range(3):  # three timeouts open the circuit
            await limiter.admit([s])
        fast = [await timed(limiter, s) for _ in range(20)]
    finally:
        own_redis.resume()
    # None waits for the store's timeout, and the usual one answers within 5 ms (a scheduling hiccup of a loaded
    # machine may delay one or two: the median, not the slowest, says what the usual refusal costs).
    times = sorted(t for t, _, _ in fast)
    assert times[-1] < BUDGET, times
    assert times[len(times) // 2] < 0.005, times
    assert all(allowed and degraded for _, allowed, degraded in fast)


async def test_a_killed_and_restarted_redis_is_used_again_without_restarting_the_gateway(
    own_redis: RedisServer, limiter: Limiter
) -> None:
    s = spec("open", "fail_open")
    assert not (await limiter.admit([s])).degraded
    own_redis.kill()
    down = [await timed(limiter, s) for _ in range(10)]
    assert all(allowed and degraded for _, allowed, degraded in down)
    assert max(t for t, _, _ in down) <= BUDGET + SLACK
    own_redis.start()
    deadline = time.monotonic() + 5.0
    while (await limiter.admit([s])).degraded:
        assert time.monotonic() < deadline, "admissions did not go back to Redis after the restart"
        await asyncio.sleep(0.05)
    engine = limiter.engine()
    assert engine.stats.noscript_reloads >= 1  # the restarted server had lost the library
    assert (await limiter.peek(s)).remaining == 999  # the new server counted only the request that recovered


@pytest.mark.serial  # 2,000 admissions against a flush every 3 ms: its own load, alone on the machine
async def test_flushing_the_scripts_and_library_under_load_fails_no_admission(own_redis: RedisServer) -> None:
    clock = SystemClock()
    # What is proved is recovery from lost scripts, not speed: a budget a loaded CI machine (two suites side by
    # side) cannot run out of, so a decision that degrades says the recovery failed.
    engine = RedisEngine(own_redis.url, clock=clock, timeout=5.0)
    limiter = Limiter({"redis": engine}, clock=clock)
    admin = aioredis.from_url(own_redis.url)
    stop = asyncio.Event()

    async def flusher() -> None:
        while not stop.is_set():
            await admin.script_flush()
            await admin.function_flush()
            await asyncio.sleep(0.003)

    task = asyncio.create_task(flusher())
    try:
        s = spec("rpm", "fail_closed", limit=1_000_000)
        decisions = []
        for _ in range(40):
            decisions += await asyncio.gather(*(limiter.admit([s]) for _ in range(50)))
    finally:
        stop.set()
        await task
        await admin.aclose()
        await limiter.close()
    refused = [d for d in decisions if not d.allowed or d.degraded]
    assert not refused, (len(refused), refused[:3], engine.stats)
    assert engine.stats.failures == 0 and engine.stats.noscript_reloads > 0


def test_the_breaker_opens_after_consecutive_failures_and_lets_one_probe_through_later() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, BreakerSettings(failures=2, open_seconds=1.0, max_open_seconds=1.0))  # no backoff
    breaker.failure()
    assert breaker.acquire() and breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.acquire()
    clock.advance(1.0)
    assert breaker.acquire()  # the probe
    assert not breaker.acquire()  # everyone else waits for it
    breaker.failure()
    assert breaker.state == "open" and not breaker.acquire()
    clock.advance(1.0)
    assert breaker.acquire()
    breaker.success()
    assert breaker.state == "closed" and breaker.acquire() and breaker.acquire()


def test_each_failed_probe_doubles_the_time_open_up_to_its_cap_and_a_success_resets_it() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, BreakerSettings(failures=1, open_seconds=0.1, max_open_seconds=0.35))
    breaker.failure()
    waits = []
    for _ in range(4):  # probe, fail: how long until the next probe may pass
        waits.append(breaker.open_for)
        clock.advance(breaker.open_for - 0.002)
        assert not breaker.acquire()
        clock.advance(0.004)
        assert breaker.acquire()
        breaker.failure()
    assert waits == [0.1, 0.2, 0.35, 0.35]
    clock.advance(0.36)
    assert breaker.acquire()
    breaker.success()
    breaker.failure()  # opens again: back to the first wait
    assert not breaker.acquire()
    clock.advance(0.11)
    assert breaker.acquire()


def test_a_probe_that_never_reached_the_store_lets_the_next_caller_probe() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(clock, BreakerSettings(failures=1, open_seconds=0.1))
    breaker.failure()
    clock.advance(0.11)
    assert breaker.acquire() and not breaker.acquire()
    breaker.abandon()  # it waited in the gateway's queue and gave up
    assert breaker.acquire()
    assert breaker.state == "half_open" and breaker.open_for == 0.1


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(ManualClock(), BreakerSettings(failures=2, open_seconds=1.0))
    breaker.failure()
    breaker.success()
    breaker.failure()
    assert breaker.state == "closed"
