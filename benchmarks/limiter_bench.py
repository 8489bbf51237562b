"""Limiter engine benchmark: a 3-limit admission on the embedded engine, on Redis, and on Redis with coalescing.

    PYTHONPATH=. python benchmarks/limiter_bench.py [--seconds 3] [--url redis://...] [--embedded-only]

Without --url it starts a private redis-server on a free loopback port
(tests/support/redis.py). CPU figures are the gateway process's own CPU
(user + system, ``time.process_time``) per admission; Redis runs in its own
process. Round trips are the pipelines the engine sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop

from tollgate.clock import SystemClock
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import EmbeddedEngine, RedisEngine


def three_limits(tenant: str) -> list[LimitSpec]:
    """Requests per minute, tokens per minute (an estimate to settle), and a monthly token quota."""
    return [
        LimitSpec(name="rpm", kind="sliding_window", limit=10**9, window_ms=60_000, tenant=tenant),
        LimitSpec(name="tpm", kind="gcra", limit=10**9, window_ms=60_000_000, cost=500, unit="tokens", tenant=tenant),
        LimitSpec(
            name="quota", kind="fixed_window", limit=10**12, calendar="month", cost=500, unit="tokens", tenant=tenant
        ),
    ]


async def measure(label: str, run_batch: Callable[[], Awaitable[int]], seconds: float, engine=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(20):  # warm up: connections, scripts, caches
        await run_batch()
    trips0 = engine.stats.round_trips if engine is not None else 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    done = 0
    while time.perf_counter() - wall0 < seconds:
        done += await run_batch()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    trips = (engine.stats.round_trips - trips0) if engine is not None else 0
    row = {
        "admissions/s": done / wall,
        "cpu us/admission": cpu / done * 1e6,
        "admissions/s per core (cpu)": done / cpu,
        "round trips/admission": trips / done if engine is not None else 0.0,
    }
    print(
        f"{label:<44} {row['admissions/s']:>10,.0f}/s  {row['cpu us/admission']:>6.1f} us CPU  "
        f"{row['admissions/s per core (cpu)']:>10,.0f}/s per core  {row['round trips/admission']:.3f} round trips"
    )
    return row


async def bench(url: str | None, seconds: float) -> None:
    clock = SystemClock()
    specs = three_limits("acme")

    engine_only = EmbeddedEngine(clock)
    limiter_keys = Limiter({"k": engine_only}, clock=clock)
    keys = [limiter_keys.key(s) for s in specs]
    args: list[object] = []
    for s in specs:
        args += [
            s.kind,
            s.limit,
            s.window_ms,
            s.cost,
            {"sliding_window": "20", "fixed_window": "month"}.get(s.kind, ""),
            "0",
        ]

    async def script_only() -> int:
        for _ in range(100):
            engine_only.run_sync("admit", keys, args)  # type: ignore[arg-type]
        return 100

    await measure("embedded, admit.lua alone (no Limiter)", script_only, seconds)

    embedded = Limiter({"e": EmbeddedEngine(clock)}, clock=clock)

    async def one_embedded() -> int:
        for _ in range(100):
            await embedded.admit(specs)
        return 100

    await measure("embedded, 3 limits", one_embedded, seconds)
    await embedded.close()
    if url is None:  # --embedded-only
        return

    sequential = Limiter({"r": RedisEngine(url, clock=clock, timeout=1.0, coalesce=False)}, clock=clock)

    async def one_redis() -> int:
        for _ in range(20):
            await sequential.admit(specs)
        return 20

    await measure("redis, one admission at a time", one_redis, seconds, sequential.engine())

    for concurrency in (16, 64, 256):
        for coalesce in (False, True):
            engine = RedisEngine(url, clock=clock, timeout=1.0, coalesce=coalesce, max_connections=concurrency + 8)
            limiter = Limiter({"r": engine}, clock=clock)

            async def wave(limiter: Limiter = limiter, n: int = concurrency) -> int:
                await asyncio.gather(*(limiter.admit(specs) for _ in range(n)))
                return n

            await measure(f"redis, {concurrency} concurrent, coalesce={coalesce}", wave, seconds, engine)
            await limiter.close()

    # the over-limit cache: a tenant hammering a key that is over its limit
    hot = [LimitSpec(name="hot", kind="gcra", limit=1, window_ms=3_600_000, tenant="hammer")]
    for cache_size in (0, 10_000):
        engine = RedisEngine(url, clock=clock, timeout=1.0)
        limiter = Limiter({"r": engine}, clock=clock, cache_size=cache_size)
        await limiter.admit(hot)

        async def refused(limiter: Limiter = limiter) -> int:
            await asyncio.gather(*(limiter.admit(hot) for _ in range(16)))
            return 16

        await measure(f"redis, over-limit key, cache={'on' if cache_size else 'off'}", refused, seconds, engine)
        await limiter.close()
    await sequential.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--url", default=None, help="an existing Redis (it will be written to); default: a private one")
    parser.add_argument("--embedded-only", action="store_true", help="only the embedded rows; no Redis needed")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, uvloop, pid {os.getpid()}, load average {os.getloadavg()[0]:.2f}")
    if args.embedded_only:
        uvloop.run(bench(None, args.seconds))
        return
    if args.url:
        uvloop.run(bench(args.url, args.seconds))
        return
    from tests.support.redis import redis_server

    with redis_server() as server:
        uvloop.run(bench(server.url, args.seconds))


if __name__ == "__main__":
    main()
