"""Runs in another OS process: fires concurrent admissions at one Redis at an agreed wall-clock instant."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tollgate.clock import SystemClock
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import RedisEngine


def fire(url: str, spec: dict[str, Any], costs: list[int], start_at: float, coalesce: bool) -> list[tuple[bool, int]]:
    """Admit one request per cost, all at once, from ``start_at``; returns (admitted, cost) for each."""
    return asyncio.run(_fire(url, LimitSpec(**spec), costs, start_at, coalesce))


async def _fire(url: str, spec: LimitSpec, costs: list[int], start_at: float, coalesce: bool) -> list[tuple[bool, int]]:
    clock = SystemClock()
    engine = RedisEngine(url, clock=clock, timeout=5.0, coalesce=coalesce, max_connections=200)
    limiter = Limiter({"redis": engine}, clock=clock, cache_size=0)
    try:
        await limiter.admit([])  # import and set up everything before the start
        await engine.run("peek", ["warmup"], ["gcra", 1, 1000, 0, "", "0"])
        await asyncio.sleep(max(0.0, start_at - time.time()))
        decisions = await asyncio.gather(*(limiter.admit([spec.with_cost(c)]) for c in costs))
        assert not any(d.degraded for d in decisions)
        return [(d.allowed, c) for d, c in zip(decisions, costs)]
    finally:
        await limiter.close()


def churn(url: str, ready: Any) -> None:
    """Admits, settles and holds leases on every kind of limit until killed (never releases anything)."""
    asyncio.run(_churn(url, ready))


async def _churn(url: str, ready: Any) -> None:
    clock = SystemClock()
    limiter = Limiter({"redis": RedisEngine(url, clock=clock, timeout=5.0)}, clock=clock)
    specs = [
        LimitSpec(name="rpm", kind="sliding_window", limit=10**9, window_ms=2_000, tenant="t1"),
        LimitSpec(
            name="tpm", kind="gcra", limit=1000, window_ms=2_000, cost=50, unit="tokens", tenant="t1", shadow=True
        ),
        LimitSpec(
            name="quota", kind="fixed_window", limit=10**9, calendar="month", cost=50, unit="tokens", tenant="t1"
        ),
        LimitSpec(name="streams", kind="concurrency", limit=10**6, window_ms=1_000, tenant="t1"),
        # 1,000 a minute: each request moves the TAT 60 ms ahead, so the key outlives a slow, loaded worker
        LimitSpec(name="ip", kind="gcra", limit=1000, window_ms=60_000, scope_key=(("ip", "10.0.0.1"),), shadow=True),
    ]
    i = 0
    while True:
        batch = await asyncio.gather(*(limiter.admit(specs) for _ in range(20)))
        for d in batch:
            if d.reservation is not None:
                await limiter.settle(d.reservation, 20 + i % 60)
        i += 1
        if i == 5:
            ready.set()
