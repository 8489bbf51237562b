"""Nothing leaks: after a load run and a kill -9 of a worker, every key in Redis has a TTL and leases come back."""

from __future__ import annotations

import asyncio
import multiprocessing

from tests.support.redis import RedisServer
from tollgate.clock import SystemClock
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import RedisEngine

from .exactness_worker import churn


async def test_no_key_is_left_without_a_ttl_after_a_load_run_and_a_killed_worker(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    worker = ctx.Process(target=churn, args=(redis_standalone.url, ready), daemon=True)
    worker.start()
    try:
        assert await asyncio.to_thread(ready.wait, 30), "the worker never got going"
        await asyncio.sleep(0.2)
    finally:
        worker.kill()  # SIGKILL: no cleanup, leases held
        worker.join(10)
    assert worker.exitcode == -9

    with redis_standalone.client() as c:
        keys = list(c.scan_iter(count=1000))
        assert len(keys) == 5  # one per limit: sliding, two GCRA (tenant and IP), calendar, leases
        without_ttl = [k for k in keys if c.pttl(k) < 0]
    assert without_ttl == []

    streams = LimitSpec(name="streams", kind="concurrency", limit=10**6, window_ms=1_000, tenant="t1")
    limiter = Limiter({"r": RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)}, clock=SystemClock())
    try:
        held = 10**6 - (await limiter.peek(streams)).remaining
        assert held > 0  # the killed worker's leases
        await asyncio.sleep(1.1)  # one lease TTL
        assert (await limiter.peek(streams)).remaining == 10**6
    finally:
        await limiter.close()
