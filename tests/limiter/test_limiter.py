"""The Limiter on every engine: all-or-nothing over hash-slot groups, shadow limits, reservations, leases, peek."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.redis import RedisServer
from tollgate.clock import ManualClock, SystemClock
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import EmbeddedEngine, RedisEngine

from .conftest import ENGINES

MINUTE = 60_000


@pytest.fixture(params=ENGINES)
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    clock = ManualClock()
    kind = request.param
    if kind == "embedded":
        engine = EmbeddedEngine(clock, name="main")
    elif kind == "redis":
        server = request.getfixturevalue("redis_standalone")
        server.flushall()
        engine = RedisEngine(server.url, clock=SystemClock(), timeout=2.0, name="main")
    else:
        cluster = request.getfixturevalue("redis_cluster_nodes")
        cluster.flushall()
        engine = RedisEngine(cluster.url, clock=SystemClock(), cluster=True, timeout=2.0, name="main")
    lim = Limiter({"main": engine}, clock=clock, local=EmbeddedEngine(clock, name="local"))
    try:
        yield lim
    finally:
        await lim.close()


def rpm(limit: int, **kw: object) -> LimitSpec:
    return LimitSpec(name="rpm", kind="sliding_window", limit=limit, window_ms=MINUTE, tenant="acme", **kw)  # type: ignore[arg-type]


def tpm(limit: int, cost: int, **kw: object) -> LimitSpec:
    return LimitSpec(
        name="tpm", kind="gcra", limit=limit, window_ms=MINUTE, cost=cost, unit="tokens", tenant="acme", **kw
    )  # type: ignore[arg-type]


def monthly(limit: int, cost: int) -> LimitSpec:
    return LimitSpec(
        name="quota", kind="fixed_window", limit=limit, calendar="month", cost=cost, unit="tokens", tenant="acme"
    )


def streams(limit: int) -> LimitSpec:
    return LimitSpec(name="streams", kind="concurrency", limit=limit, window_ms=30_000, tenant="acme")


def global_rpm(limit: int) -> LimitSpec:
    return LimitSpec(name="global", kind="sliding_window", limit=limit, window_ms=MINUTE)


def per_ip(limit: int, ip: str) -> LimitSpec:
    return LimitSpec(name="ip", kind="gcra", limit=limit, window_ms=MINUTE, scope_key=(("ip", ip),))


async def test_admit_reports_every_limit_and_consumes_them_together(limiter: Limiter) -> None:
    d = await limiter.admit([rpm(10), tpm(1000, 100), monthly(10_000, 100), streams(3)])
    assert d.allowed and not d.degraded and d.retry_after_ms == 0
    assert [(s.name, s.remaining) for s in d.limits] == [("rpm", 9), ("tpm", 900), ("quota", 9900), ("streams", 2)]
    assert d.reservation is not None and {c.spec.name for c in d.reservation.charges} == {"tpm", "quota"}
    assert d.lease is not None and [c.spec.name for c in d.lease.charges] == ["streams"]


async def test_one_refusing_limit_leaves_every_other_limit_untouched(limiter: Limiter) -> None:
    assert (await limiter.admit([tpm(1000, 900)])).allowed
    d = await limiter.admit([rpm(10), tpm(1000, 200), streams(3)])
    assert not d.allowed and [s.name for s in d.refused] == ["tpm"]
    assert d.retry_after_ms > 0 and d.reservation is None and d.lease is None
    assert (await limiter.peek(rpm(10))).remaining == 10
    assert (await limiter.peek(streams(3))).remaining == 3


async def test_a_refusing_global_limit_refunds_what_the_tenant_group_consumed(limiter: Limiter) -> None:
    """On Cluster the tenant group and the global group are two calls: the first is refunded."""
    assert (await limiter.admit([global_rpm(1)])).allowed
    d = await limiter.admit([rpm(10), tpm(1000, 300), streams(1), global_rpm(1), per_ip(5, "10.0.0.1")])
    assert not d.allowed and [s.name for s in d.refused] == ["global"]
    assert (await limiter.peek(rpm(10))).remaining == 10
    assert (await limiter.peek(tpm(1000, 0))).remaining in (999, 1000)
    assert (await limiter.peek(streams(1))).remaining == 1
    assert (await limiter.peek(per_ip(5, "10.0.0.1"))).remaining == 5
    expected = 1 if limiter.engine().single_slot else 0
    assert limiter.stats.compensations == expected


async def test_shadow_limit_reports_a_refusal_but_the_request_is_admitted(limiter: Limiter) -> None:
    shadow = LimitSpec(name="trial", kind="sliding_window", limit=1, window_ms=MINUTE, tenant="acme", shadow=True)
    await limiter.admit([rpm(10), shadow])
    d = await limiter.admit([rpm(10), shadow])
    assert d.allowed and d.refused == ()
    assert [s.allowed for s in d.limits] == [True, False] and d.limits[1].shadow


async def test_settle_refunds_an_overestimate(limiter: Limiter) -> None:
    d = await limiter.admit([tpm(1000, 500), monthly(10_000, 500)])
    assert d.reservation is not None and d.reservation.reserved == 500
    result = await limiter.settle(d.reservation, 120)
    assert {s.name: s.applied for s in result.limits} == {"tpm": -380, "quota": -380}
    assert result.overdraft == 0 and not result.degraded
    assert (await limiter.peek(monthly(10_000, 0))).remaining == 9880


async def test_settle_charges_an_underestimate_and_reports_the_overdraft(limiter: Limiter) -> None:
    d = await limiter.admit([monthly(1000, 900)])
    assert d.reservation is not None
    result = await limiter.settle(d.reservation, 1500)
    assert result.limits[0].applied == 600 and result.overdraft == 500
    refused = await limiter.admit([monthly(1000, 1)])
    assert not refused.allowed


async def test_settle_is_applied_once(limiter: Limiter) -> None:
    d = await limiter.admit([monthly(1000, 100)])
    assert d.reservation is not None
    first = await limiter.settle(d.reservation, 50)
    assert await limiter.settle(d.reservation, 10) is first
    assert (await limiter.peek(monthly(1000, 0))).remaining == 950


async def test_settle_with_the_exact_estimate_makes_no_store_call(limiter: Limiter) -> None:
    d = await limiter.admit([monthly(1000, 100)])
    assert d.reservation is not None
    calls = limiter.engine().stats.calls
    result = await limiter.settle(d.reservation, 100)
    assert result.limits == () and limiter.engine().stats.calls == calls


async def test_released_lease_frees_its_slot_and_release_is_idempotent(limiter: Limiter) -> None:
    first = await limiter.admit([streams(1)])
    assert first.allowed and first.lease is not None
    assert not (await limiter.admit([streams(1)])).allowed
    assert await limiter.renew(first.lease)
    assert await limiter.release(first.lease)
    assert not await limiter.release(first.lease)
    assert not await limiter.renew(first.lease)
    assert (await limiter.admit([streams(1)])).allowed


async def test_peek_reads_a_counter_without_consuming(limiter: Limiter) -> None:
    await limiter.admit([rpm(10)])
    assert (await limiter.peek(rpm(10))).remaining == 9
    assert (await limiter.peek(rpm(10))).remaining == 9


async def test_the_refusal_names_the_limit_and_its_retry_after(limiter: Limiter) -> None:
    for _ in range(3):
        await limiter.admit([rpm(3)])
    d = await limiter.admit([rpm(3), tpm(1000, 1)])
    assert not d.allowed and [s.name for s in d.refused] == ["rpm"]
    assert 0 < d.retry_after_ms <= MINUTE + MINUTE // 20
    assert d.retry_after_ms == d.refused[0].retry_after_ms


async def test_an_empty_list_of_limits_is_admitted() -> None:
    lim = Limiter({"m": EmbeddedEngine(ManualClock())}, clock=ManualClock())
    assert (await lim.admit([])).allowed


async def test_finish_many_settles_and_releases_a_whole_batch_in_one_store_call(limiter: Limiter) -> None:
    admitted = [await limiter.admit([tpm(100_000, 500), monthly(100_000, 500), streams(3)]) for _ in range(3)]
    assert all(d.allowed for d in admitted) and not (await limiter.admit([streams(3)])).allowed
    calls = limiter.engine().stats.calls
    results = await limiter.finish_many(
        [(d.reservation, actual, d.lease) for d, actual in zip(admitted, (120, 500, 900))]
    )
    assert limiter.engine().stats.calls == calls + 1
    assert [{s.name: s.applied for s in settlement.limits} for settlement, _ in results if settlement is not None] == [
        {"tpm": -380, "quota": -380},
        {},
        {"tpm": 400, "quota": 400},
    ]
    assert all(released for _, released in results)
    for d, (settlement, _) in zip(admitted, results):
        assert d.reservation is not None and d.reservation.settlement is settlement
        assert d.lease is not None and d.lease.released
    assert (await limiter.peek(monthly(100_000, 0))).remaining == 100_000 - 120 - 500 - 900
    assert all([(await limiter.admit([streams(3)])).allowed for _ in range(3)])  # the three leases are free again
    # Finishing twice changes nothing: settled reservations and released leases are left alone.
    calls = limiter.engine().stats.calls
    await limiter.finish_many([(d.reservation, 0, d.lease) for d in admitted])
    assert limiter.engine().stats.calls == calls


@pytest.mark.process
async def test_finish_many_on_a_dead_store_reports_degraded_settlements_and_kept_leases() -> None:
    server = RedisServer()
    server.start()
    clock = SystemClock()
    lim = Limiter({"main": RedisEngine(server.url, clock=clock, timeout=0.5, name="main")}, clock=clock)
    try:
        d = await lim.admit([tpm(100_000, 500), streams(3)])
        assert d.allowed and d.reservation is not None and d.lease is not None
        server.kill()
        [(settlement, released)] = await lim.finish_many([(d.reservation, 100, d.lease)])
        assert settlement is not None and settlement.degraded and settlement.limits == ()
        assert not released  # the lease expires by its TTL instead
    finally:
        await lim.close()
        server.cleanup()
