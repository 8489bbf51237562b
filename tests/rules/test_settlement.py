"""Settling a reservation and its stream extensions charges exactly the real usage."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from tests.support.redis import RedisServer
from tollgate.config.store import StoreConfig, StoreEndpoint
from tollgate.eager import Eager
from tollgate.limiter import LimitSpec, build_limiter
from tollgate.policy.admission import Admission
from tollgate.policy.settlement import Settler
from tollgate.upstream.usage import Usage

SPEC = LimitSpec(
    name="tph",
    kind="sliding_window",
    limit=10_000,
    window_ms=3_600_000,
    cost=100,
    unit="tokens",
    scope_key=(("tenant", "t"),),
    tenant="t",
)


@pytest.mark.parametrize(("actual", "charged"), [(30, 30), (120, 120), (400, 400), (0, 0)])
async def test_usage_fills_the_reservation_then_the_extensions_and_the_rest_is_given_back(
    actual: int, charged: int
) -> None:
    limiter = build_limiter()
    first = await limiter.admit([SPEC])
    extension = await limiter.admit([SPEC.with_cost(50)])
    assert first.reservation is not None and extension.reservation is not None
    admission = Admission(decision=first, completion_reserved=100, extensions=[extension.reservation])
    ctx = SimpleNamespace(admission=admission, usage=Usage(actual, 0, reported=True), first_byte_at=1.0)
    settler = Settler(limiter)
    settler.finish(ctx)  # type: ignore[arg-type]
    await settler.drain()
    state = await limiter.peek(SPEC.with_cost(0))
    assert state.limit - state.remaining == charged
    await limiter.close()


class _Counted:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, str]] = []

    def limit_decision(self, rule: str, outcome: str, n: int = 1) -> None:
        self.decisions.append((rule, outcome))

    def degraded_admission(self, rule: str, mode: str) -> None:
        raise AssertionError("not expected here")


async def test_usage_past_a_spent_budget_is_charged_and_counted_as_overdraft() -> None:
    limiter = build_limiter()
    small = LimitSpec(
        name="tiny",
        kind="fixed_window",
        limit=100,
        window_ms=60_000,
        calendar="minute",
        cost=100,
        unit="tokens",
        scope_key=(("tenant", "t"),),
        tenant="t",
    )
    admitted = await limiter.admit([small])
    admission = Admission(decision=admitted, completion_reserved=100)
    metrics = _Counted()
    settler = Settler(limiter, metrics=metrics)
    settler.finish(SimpleNamespace(admission=admission, usage=Usage(60, 90, reported=True), first_byte_at=1.0))  # type: ignore[arg-type]
    await settler.drain()
    assert metrics.decisions == [("tiny", "overdraft")]
    assert settler.overdrafts == 1
    await limiter.close()


CONCURRENT = LimitSpec(
    name="inflight",
    kind="concurrency",
    limit=50,
    window_ms=60_000,
    cost=1,
    unit="requests",
    scope_key=(("tenant", "t"),),
    tenant="t",
)


@pytest.mark.parametrize("backend", ["embedded", pytest.param("redis", marks=pytest.mark.process)])
async def test_a_batch_mixing_extended_streams_and_plain_requests_charges_each_exactly_and_releases_every_lease(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Extended streams settle inside the batch's one store call: each part of a reservation to its share of the real
    use, the lease given back with the others'. Nothing may be charged twice or lost, and no lease may stay held."""
    if backend == "embedded":
        limiter = build_limiter()
    else:
        server: RedisServer = request.getfixturevalue("redis_standalone")
        server.flushall()
        endpoint = StoreEndpoint(backend="redis", url=server.url, timeout=2.0)
        limiter = build_limiter(StoreConfig(stores={"default": endpoint}))
    settler = Settler(limiter)
    used = [30, 120, 400, 0, 75, 150]  # even positions: plain requests; odd: streams that extended by 50 once
    for i, actual in enumerate(used):
        admitted = await limiter.admit([SPEC, CONCURRENT])
        assert admitted.allowed and admitted.lease is not None
        extensions = []
        if i % 2:
            extension = await limiter.admit([SPEC.with_cost(50)])
            assert extension.reservation is not None
            extensions.append(extension.reservation)
        admission = Admission(decision=admitted, completion_reserved=100, extensions=extensions)
        settler.finish(SimpleNamespace(admission=admission, usage=Usage(actual, 0, reported=True), first_byte_at=1.0))  # type: ignore[arg-type]
    held = await limiter.peek(CONCURRENT.with_cost(0))
    assert held.limit - held.remaining == len(used)  # every lease still held before the batch settles
    await settler.drain()
    tokens = await limiter.peek(SPEC.with_cost(0))
    assert tokens.limit - tokens.remaining == sum(used)
    held = await limiter.peek(CONCURRENT.with_cost(0))
    assert held.remaining == held.limit, "a lease stayed held after its request was settled"
    assert (settler.settled, settler.failures) == (len(used), 0)
    await limiter.close()


LEASE = LimitSpec(name="inflight", kind="concurrency", limit=10, scope_key=(("tenant", "t"),), tenant="t")


async def test_a_batch_of_released_leases_wakes_lease_waiters_once_and_counts_every_request() -> None:
    limiter = build_limiter()
    woken: list[int] = []
    settler = Settler(limiter, on_release=lambda: woken.append(1))
    for _ in range(3):
        admitted = await limiter.admit([SPEC, LEASE])
        assert admitted.lease is not None
        admission = Admission(decision=admitted, completion_reserved=100)
        settler.finish(SimpleNamespace(admission=admission, usage=Usage(10, 0, reported=True), first_byte_at=1.0))  # type: ignore[arg-type]
    await settler.drain()
    assert woken == [1]
    assert settler.settled == 3 and settler.failures == 0
    assert (await limiter.peek(LEASE)).remaining == 10
    await limiter.close()


async def test_requests_finished_before_the_worker_started_are_settled_once_it_runs() -> None:
    limiter = build_limiter()
    settler = Settler(limiter)
    for _ in range(2):
        admitted = await limiter.admit([SPEC])
        admission = Admission(decision=admitted, completion_reserved=100)
        settler.finish(SimpleNamespace(admission=admission, usage=Usage(30, 0, reported=True), first_byte_at=1.0))  # type: ignore[arg-type]
    settler.start()
    for _ in range(20):
        await asyncio.sleep(0)
        if settler.settled == 2:
            break
    assert settler.settled == 2
    state = await limiter.peek(SPEC.with_cost(0))
    assert state.limit - state.remaining == 60
    await settler.close()
    await limiter.close()


async def test_a_stream_whose_extension_ended_after_its_last_event_settles_in_the_batchs_one_call() -> None:
    """Its extension came back after the stream's last event, so the relay never cleared it: it is over, and the
    stream settles with the batch (one store call), not on its own (an adjust and a release for each)."""
    limiter = build_limiter()
    settler = Settler(limiter)
    used = [30, 120, 400]
    loop = asyncio.get_running_loop()
    for actual in used:
        admitted = await limiter.admit([SPEC, CONCURRENT])
        extension = await limiter.admit([SPEC.with_cost(50)])
        assert admitted.lease is not None and extension.reservation is not None

        async def came_back() -> None:
            return None

        pending = Eager(came_back(), loop)
        assert pending.done()
        admission = Admission(
            decision=admitted, completion_reserved=100, extensions=[extension.reservation], pending=pending
        )
        settler.finish(SimpleNamespace(admission=admission, usage=Usage(actual, 0, reported=True), first_byte_at=1.0))  # type: ignore[arg-type]
    engine = limiter.engine()
    calls = engine.stats.calls
    await settler.drain()
    assert engine.stats.calls - calls == 1, "the three streams settled and released in one call"
    tokens = await limiter.peek(SPEC.with_cost(0))
    assert tokens.limit - tokens.remaining == sum(used)
    held = await limiter.peek(CONCURRENT.with_cost(0))
    assert held.remaining == held.limit
    assert (settler.settled, settler.failures) == (len(used), 0)
    await limiter.close()
