"""Exactness under real concurrency: 2 OS processes, 200 simultaneous admissions, one Redis."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from tests.support.redis import RedisServer
from tollgate.clock import SystemClock
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import RedisEngine

from .exactness_worker import fire

LONG = 400 * 86_400_000  # long windows: nothing refills while the test runs


@pytest.fixture(scope="module")
def two_processes() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0, 0]))  # both started
        yield pool


def race(
    pool: ProcessPoolExecutor, url: str, spec: dict[str, Any], costs: list[int], coalesce: bool
) -> list[tuple[bool, int]]:
    """Half the costs from each process, fired at the same instant."""
    start_at = time.time() + 0.4
    half = len(costs) // 2
    jobs = [pool.submit(fire, url, spec, part, start_at, coalesce) for part in (costs[:half], costs[half:])]
    return [row for job in jobs for row in job.result(timeout=60)]


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "one-call-each"])
@pytest.mark.parametrize(
    "spec",
    [
        {"name": "rpm", "kind": "sliding_window", "limit": 50, "window_ms": 3_600_000, "tenant": "acme"},
        {"name": "rpm", "kind": "gcra", "limit": 50, "window_ms": LONG, "tenant": "acme"},
        {"name": "rpm", "kind": "fixed_window", "limit": 50, "window_ms": LONG, "tenant": "acme"},
        {"name": "streams", "kind": "concurrency", "limit": 50, "window_ms": 60_000, "tenant": "acme"},
    ],
    ids=lambda s: s["kind"],
)
def test_200_concurrent_admissions_from_2_processes_admit_exactly_50(
    two_processes: ProcessPoolExecutor, redis_standalone: RedisServer, spec: dict[str, Any], coalesce: bool
) -> None:
    redis_standalone.flushall()
    rows = race(two_processes, redis_standalone.url, spec, [1] * 200, coalesce)
    assert len(rows) == 200
    assert sum(1 for admitted, _ in rows if admitted) == 50


@pytest.mark.parametrize("kind", ["sliding_window", "gcra", "fixed_window"])
async def test_a_token_budget_is_never_overdrawn_by_parallel_requests_with_random_costs(
    two_processes: ProcessPoolExecutor, redis_standalone: RedisServer, kind: str
) -> None:
    redis_standalone.flushall()
    budget = 5000
    spec = {
        "name": "tpm",
        "kind": kind,
        "limit": budget,
        "window_ms": LONG if kind != "sliding_window" else 3_600_000,
        "tenant": "acme",
        "unit": "tokens",
    }
    costs = [random.Random(f"{kind}-{i}").randint(1, 300) for i in range(200)]
    rows = race(two_processes, redis_standalone.url, spec, costs, True)
    spent = sum(c for admitted, c in rows if admitted)
    refused = [c for admitted, c in rows if not admitted]
    assert spent <= budget and refused
    limiter = Limiter({"r": RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)}, clock=SystemClock())
    try:
        left = (await limiter.peek(LimitSpec(**{**spec, "cost": 0}))).remaining  # type: ignore[arg-type]
    finally:
        await limiter.close()
    assert left == budget - spent
    assert left < min(refused)
