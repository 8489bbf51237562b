"""Every limiter script, run the same way on the embedded engine, a standalone Redis and a 3-master Cluster."""

from __future__ import annotations

import pytest

from tests.support.redis import RedisCluster, RedisServer

from .conftest import Store
from .scriptcalls import Lim, admit, extend, peek, release, renew, settle

MINUTE = 60_000


async def ttls(store: Store, request: pytest.FixtureRequest) -> dict[str, int]:
    """PTTL of every key the store holds."""
    if store.kind == "embedded":
        ks = store.engine.keyspace  # type: ignore[attr-defined]
        live = ks.keys()  # a Keyspace, not a dict: keys() lists the live keys
        return {k: ks.ttl_ms(k) for k in live}
    if store.kind == "redis":
        servers = [request.getfixturevalue("redis_standalone")]
    else:
        servers = request.getfixturevalue("redis_cluster_nodes").nodes
    out = {}
    for server in servers:
        with server.client() as c:
            for key in c.scan_iter(count=1000):
                out[key.decode()] = c.pttl(key)
    return out


async def test_sliding_window_admits_exactly_the_limit_then_refuses(store: Store) -> None:
    lim = Lim("{t}:sw", "sliding_window", 5, MINUTE, param="10")
    results = [await admit(store.engine, lim) for _ in range(7)]
    assert [r.admitted for r in results] == [True] * 5 + [False] * 2
    assert [r[0].remaining for r in results] == [4, 3, 2, 1, 0, 0, 0]
    refused = results[-1][0]
    assert refused.allowed is False and 0 < refused.retry_ms <= MINUTE + MINUTE // 10
    assert refused.limit == 5


async def test_sliding_window_refusal_consumes_nothing(store: Store) -> None:
    lim = Lim("{t}:sw", "sliding_window", 10, MINUTE, cost=7, param="10")
    assert (await admit(store.engine, lim)).admitted
    refused = await admit(store.engine, lim)
    assert not refused.admitted and refused[0].remaining == 3
    assert (await peek(store.engine, lim))[0].remaining == 3
    small = Lim("{t}:sw", "sliding_window", 10, MINUTE, cost=3, param="10")
    assert (await admit(store.engine, small)).admitted


async def test_sliding_window_counts_again_once_the_window_has_passed(store: Store) -> None:
    lim = Lim("{t}:sw", "sliding_window", 2, 200, param="4")
    assert (await admit(store.engine, lim)).admitted
    assert (await admit(store.engine, lim)).admitted
    refused = await admit(store.engine, lim)
    assert not refused.admitted and 0 < refused[0].retry_ms <= 250
    await store.advance(0.26)
    assert (await admit(store.engine, lim)).admitted


async def test_gcra_spends_the_burst_then_refills_at_the_rate(store: Store) -> None:
    lim = Lim("{t}:gcra", "gcra", 5, 1000)
    assert [(await admit(store.engine, lim)).admitted for _ in range(5)] == [True] * 5
    refused = await admit(store.engine, lim)
    assert not refused.admitted
    assert 0 < refused[0].retry_ms <= 200 and refused[0].remaining == 0
    await store.advance(refused[0].retry_ms / 1000 + 0.01)
    assert (await admit(store.engine, lim)).admitted


async def test_gcra_charges_cost_per_call_for_token_budgets(store: Store) -> None:
    lim = Lim("{t}:tok", "gcra", 1000, MINUTE, cost=400)
    first = await admit(store.engine, lim)
    assert first.admitted and first[0].remaining in (599, 600)
    assert (await admit(store.engine, lim)).admitted
    refused = await admit(store.engine, lim)
    assert not refused.admitted and refused[0].remaining in (199, 200)
    # 200 more tokens accrue in 12 s at 1000 per minute
    assert 11_000 < refused[0].retry_ms <= 12_100


async def test_a_cost_above_the_limit_is_refused_with_retry_after_minus_one(store: Store) -> None:
    for lim in (
        Lim("{t}:a", "gcra", 10, MINUTE, cost=11),
        Lim("{t}:b", "sliding_window", 10, MINUTE, cost=11, param="10"),
        Lim("{t}:c", "fixed_window", 10, MINUTE, cost=11, param="hour"),
    ):
        reply = await admit(store.engine, lim)
        assert not reply.admitted and reply[0].retry_ms == -1 and reply[0].remaining == 10


async def test_fixed_calendar_window_counts_costs_until_the_window_ends(store: Store) -> None:
    lim = Lim("{t}:quota", "fixed_window", 100, 0, cost=60, param="day")
    first = await admit(store.engine, lim)
    assert first.admitted and first[0].remaining == 40
    assert 0 < first[0].reset_ms <= 86_400_000
    assert first[0].mark % 86_400_000 == 0  # the window starts at midnight UTC
    refused = await admit(store.engine, lim)
    assert not refused.admitted and refused[0].retry_ms == refused[0].reset_ms


async def test_concurrency_leases_are_acquired_renewed_and_released(store: Store) -> None:
    a = Lim("{t}:cc", "concurrency", 2, 5000, param="lease-a")
    b = Lim("{t}:cc", "concurrency", 2, 5000, param="lease-b")
    c = Lim("{t}:cc", "concurrency", 2, 5000, param="lease-c")
    assert (await admit(store.engine, a)).admitted
    assert (await admit(store.engine, b)).admitted
    refused = await admit(store.engine, c)
    assert not refused.admitted and refused[0].remaining == 0 and 0 < refused[0].retry_ms <= 1000
    assert await renew(store.engine, "{t}:cc", "lease-a", 10_000) == 1
    assert await release(store.engine, "{t}:cc", "lease-a") == 1
    assert await release(store.engine, "{t}:cc", "lease-a") == 0  # idempotent
    assert await renew(store.engine, "{t}:cc", "lease-a", 10_000) == 0  # gone: not re-acquired
    assert (await admit(store.engine, c)).admitted


async def test_settling_a_lease_with_a_refund_releases_it_and_reports_only_the_release(store: Store) -> None:
    a = Lim("{t}:cc", "concurrency", 2, 5000, param="lease-a")
    b = Lim("{t}:cc", "concurrency", 2, 5000, param="lease-b")
    assert (await admit(store.engine, a)).admitted and (await admit(store.engine, b)).admitted
    # Nobody reads the state after a release (its request has answered): only what was released is reported.
    assert await settle(store.engine, a, -1, 0) == (-1,)
    assert await settle(store.engine, a, -1, 0) == (0,)  # already released
    assert (await admit(store.engine, Lim("{t}:cc", "concurrency", 2, 5000, param="lease-c"))).admitted
    assert not (await admit(store.engine, Lim("{t}:cc", "concurrency", 2, 5000, param="lease-d"))).admitted


async def test_concurrency_lease_of_a_crashed_holder_expires_with_its_ttl(store: Store) -> None:
    lease = Lim("{t}:cc", "concurrency", 1, 200, param="crashed")
    assert (await admit(store.engine, lease)).admitted
    assert not (await admit(store.engine, Lim("{t}:cc", "concurrency", 1, 200, param="next"))).admitted
    await store.advance(0.25)
    assert (await admit(store.engine, Lim("{t}:cc", "concurrency", 1, 200, param="next"))).admitted


async def test_admission_is_all_or_nothing_across_limits(store: Store) -> None:
    roomy = Lim("{t}:roomy", "sliding_window", 100, MINUTE, param="10")
    full = Lim("{t}:full", "gcra", 1, MINUTE)
    lease = Lim("{t}:lease", "concurrency", 5, MINUTE, param="x")
    assert (await admit(store.engine, full)).admitted
    refused = await admit(store.engine, roomy, full, lease)
    assert not refused.admitted
    assert [r.allowed for r in refused.limits] == [True, False, True]
    after = await peek(store.engine, roomy, full, lease)
    assert after[0].remaining == 100 and after[2].remaining == 5  # nothing consumed


async def test_shadow_limit_reports_its_refusal_but_never_refuses(store: Store) -> None:
    enforced = Lim("{t}:enforced", "sliding_window", 100, MINUTE, param="10")
    shadow = Lim("{t}:shadow", "sliding_window", 1, MINUTE, param="10", shadow=True)
    assert (await admit(store.engine, enforced, shadow)).admitted
    second = await admit(store.engine, enforced, shadow)
    assert second.admitted and second[1].allowed is False
    assert (await peek(store.engine, enforced))[0].remaining == 98


async def test_settle_refunds_and_charges_the_difference_reporting_overdraft(store: Store) -> None:
    for lim in (
        Lim("{t}:s-sw", "sliding_window", 1000, MINUTE, cost=500, param="10"),
        Lim("{t}:s-fw", "fixed_window", 1000, MINUTE, cost=500, param="hour"),
        Lim("{t}:s-gc", "gcra", 1000, MINUTE, cost=500),
    ):
        reply = await admit(store.engine, lim)
        assert reply.admitted
        mark = reply[0].mark
        applied, overdraft, remaining, _ = await settle(store.engine, lim, -300, mark)  # used 200 of 500
        assert applied == -300 and overdraft == 0 and remaining in (799, 800), lim
        applied, overdraft, remaining, _ = await settle(store.engine, lim, 1000, mark)  # then 1000 more
        assert applied == 1000 and overdraft in (200, 201) and remaining == 0, lim
        refused = await admit(store.engine, Lim(lim.key, lim.kind, lim.limit, lim.window_ms, 1, lim.param))
        assert not refused.admitted, lim


async def test_refund_never_takes_back_more_than_was_charged(store: Store) -> None:
    lim = Lim("{t}:r", "sliding_window", 100, MINUTE, cost=10, param="10")
    reply = await admit(store.engine, lim)
    applied, _, remaining, _ = await settle(store.engine, lim, -50, reply[0].mark)
    assert applied == -10 and remaining == 100


async def test_every_key_the_scripts_write_has_a_ttl(store: Store, request: pytest.FixtureRequest) -> None:
    limits = [
        Lim("{t}:k1", "sliding_window", 10, MINUTE, param="10"),
        Lim("{t}:k2", "gcra", 10, MINUTE),
        Lim("{t}:k3", "fixed_window", 10, MINUTE, param="month"),
        Lim("{t}:k4", "fixed_window", 10, 5000, param=""),
        Lim("{t}:k5", "concurrency", 10, MINUTE, param="l1"),
    ]
    reply = await admit(store.engine, *limits)
    for lim, row in zip(limits, reply.limits):
        await settle(store.engine, lim, 3, row.mark)
    await renew(store.engine, "{t}:k5", "l1", 90_000)
    found = await ttls(store, request)
    assert set(found) == {lim.key for lim in limits}
    assert all(ttl > 0 for ttl in found.values()), found


@pytest.mark.process
@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_a_flushed_script_cache_and_library_are_reloaded_without_an_error(
    kind: str, request: pytest.FixtureRequest
) -> None:
    from tollgate.clock import SystemClock
    from tollgate.limiter.store import RedisEngine

    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_standalone")
        nodes = [server]
        engine = RedisEngine(server.url, clock=SystemClock(), timeout=2.0)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster_nodes")
        nodes = cluster.nodes
        engine = RedisEngine(cluster.url, clock=SystemClock(), cluster=True, timeout=2.0)
    try:
        lim = Lim("{flush}:sw", "sliding_window", 100, MINUTE, param="10")
        assert (await admit(engine, lim)).admitted
        before = engine.stats.noscript_reloads
        for node in nodes:
            with node.client() as c:
                c.script_flush()
                c.function_flush()
        assert (await admit(engine, lim))[0].remaining == 98
        assert engine.stats.noscript_reloads == before + 1
        assert (await admit(engine, lim))[0].remaining == 97
        assert engine.stats.noscript_reloads == before + 1  # loaded again with the resend
        assert engine.stats.failures == 0
    finally:
        await engine.close()


@pytest.mark.parametrize(("kind", "param"), [("sliding_window", "10"), ("fixed_window", "hour"), ("gcra", "")])
async def test_extend_takes_what_a_limit_has_left_rather_than_all_or_nothing(
    store: Store, kind: str, param: str
) -> None:
    lim = Lim("{t}:ext", kind, 200, 3_600_000, cost=19, param=param)
    assert (await admit(store.engine, lim)).admitted
    # 181 left: a want of 256 (the old all-or-nothing extension cut the stream here) takes an eighth of
    # what is left, again and again, until all 181 are granted, one token at least each time.
    grants = []
    while True:
        [(granted, _, _)] = await extend(store.engine, (lim, 256, 1))
        if not granted:
            break
        grants.append(granted)
    assert grants[0] == 181 // 8 and grants[-1] == 1 and sum(grants) == 181
    assert (await peek(store.engine, lim))[0].used == 200  # nothing left: the last call granted and wrote nothing
    [(granted, _, _)] = await extend(store.engine, (lim, 10, 1))
    assert granted == 0


async def test_extend_grants_nothing_below_the_need_and_each_limit_on_its_own(store: Store) -> None:
    wide = Lim("{t}:wide", "fixed_window", 1000, MINUTE, cost=100, param="minute")
    narrow = Lim("{t}:narrow", "fixed_window", 120, MINUTE, cost=100, param="minute")
    assert (await admit(store.engine, wide, narrow)).admitted
    (w, _, w_mark), (n, n_left, _) = await extend(store.engine, (wide, 50, 30), (narrow, 50, 30))
    assert (w, n, n_left) == (50, 0, 20)  # wide had 900 (over 8 x 50) left; narrow 20, less than the 30 needed
    assert (await peek(store.engine, narrow))[0].used == 100
    assert (await peek(store.engine, wide))[0].used == 150
    # what was granted settles like any reservation
    await settle(store.engine, wide, -50, w_mark)
    assert (await peek(store.engine, wide))[0].used == 100


async def test_peek_reports_usage_past_the_limit_after_an_overdraft(store: Store) -> None:
    lim = Lim("{t}:over", "fixed_window", 500, MINUTE, cost=400, param="minute")
    reply = await admit(store.engine, lim)
    await settle(store.engine, lim, 1600, reply[0].mark)  # the stream used 2000
    got = (await peek(store.engine, lim))[0]
    assert got.used == 2000 and got.remaining == 0
    sw = Lim("{t}:sw-over", "sliding_window", 500, MINUTE, cost=400, param="10")
    reply = await admit(store.engine, sw)
    await settle(store.engine, sw, 100, reply[0].mark)
    assert (await peek(store.engine, sw))[0].used == 500
    gc = Lim("{t}:gc-over", "gcra", 500, MINUTE, cost=400)
    reply = await admit(store.engine, gc)
    await settle(store.engine, gc, 600, reply[0].mark)
    assert (await peek(store.engine, gc))[0].used == 1000
