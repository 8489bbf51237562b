"""The scaler's decisions with a manual clock and simulated signals: factor steps, cooldowns, bounds, quotas."""

from __future__ import annotations

import time

import pytest

from tollgate.config import config_from_dict
from tollgate.errors import ConfigError
from tollgate.scaling import Signals, decide

from ..support.processes import gateway_config
from .support import Harness, Quotas, pool


async def test_a_load_ramp_scales_up_in_factor_steps_one_cooldown_apart() -> None:
    h = Harness({"p": pool(min_replicas=2, cooldown_up=300)})
    assert await h.step("p", 0, inflight=10) == 2  # 5 per replica: under the target of 10
    assert await h.step("p", 15, inflight=40) == 3  # 20 per replica: 2 * 1.5
    # Still loaded, but within the up cooldown: no new step until 300 s after the last one.
    for _ in range(19):
        assert await h.step("p", 15, inflight=80) == 3
    assert await h.step("p", 15, inflight=80) == 5  # ceil(3 * 1.5), 300 s after the first step
    assert await h.step("p", 300, inflight=200) == 8  # ceil(5 * 1.5)
    assert h.actuator.applied == [("p", 3), ("p", 5), ("p", 8)]
    assert h.metric("tollgate_scaling_desired_replicas", {"pool": "p"}) == 8


async def test_scale_down_waits_for_its_cooldown_then_halves() -> None:
    h = Harness({"p": pool(min_replicas=1, initial_replicas=8, cooldown_down=600)})
    assert await h.step("p", 0, inflight=200) == 12  # scale up first: the down cooldown counts from here
    assert await h.step("p", 15, inflight=0) == 12
    assert await h.step("p", 570, inflight=0) == 12  # 585 s after the scale-up
    assert await h.step("p", 15, inflight=0) == 6  # 600 s: halved
    assert await h.step("p", 600, inflight=0) == 3
    assert await h.step("p", 600, inflight=0) == 1
    assert await h.step("p", 600, inflight=0) == 1  # min_replicas


async def test_min_and_max_replicas_bound_every_decision() -> None:
    h = Harness({"p": pool(min_replicas=2, max_replicas=4, initial_replicas=0, cooldown_up=1)})
    assert await h.step("p", 0, inflight=0) == 2  # below min: raised to it at once
    assert await h.step("p", 10, inflight=10_000) == 3
    assert await h.step("p", 10, inflight=10_000) == 4
    assert await h.step("p", 10, inflight=10_000) == 4
    assert "at max_replicas 4" in (h.scaler.pools["p"].last_decision or {})["reason"]


async def test_disabled_scale_up_and_scale_down_hold_the_replicas() -> None:
    h = Harness({"up": pool(scale_up=False), "down": pool(scale_down=False, initial_replicas=5)})
    assert await h.step("up", 0, inflight=1000) == 1
    assert await h.step("down", 0, inflight=0) == 5


async def test_a_tenant_quota_blocks_the_scale_up_logged_audited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness({"acme": pool(tenant="acme", initial_replicas=3, cooldown_up=0.001)}, quotas=Quotas(quota=4))
    assert await h.step("acme", 1, inflight=60) == 4  # wanted ceil(3 * 1.5) = 5, capped at the quota 4
    assert await h.step("acme", 1, inflight=80) == 4  # wanted 6: blocked outright
    assert "quota 4" in caplog.text and "now 4" in caplog.text
    assert h.metric("tollgate_scaling_blocked_total", {"pool": "acme"}) == 2
    await h.audit.flush()
    events = [e for e in await h.audit.list() if e["kind"] == "scaling_blocked"]
    assert len(events) == 2 and events[0]["tenant"] == "acme"
    assert events[0]["detail"] == {"quota": 4, "current": 4, "wanted": 6, "reason": events[0]["detail"]["reason"]}
    last = h.scaler.pools["acme"].last_decision or {}
    assert last["blocked"] is True and last["quota"] == 4 and "instance quota 4" in last["blocked_reason"]
    # Scale-downs are never blocked (and never ask for the quota).
    reads = h.quotas.reads
    assert await h.step("acme", 700, inflight=0) == 2
    assert h.quotas.reads == reads


async def test_an_unreadable_quota_lets_the_scale_up_proceed_with_a_warning_and_a_metric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness({"acme": pool(tenant="acme", initial_replicas=4)}, quotas=Quotas(quota=4, failing=True))
    assert await h.step("acme", 1, inflight=80) == 6
    assert "without its quota" in caplog.text and "registry store is down" in caplog.text
    assert h.metric("tollgate_scaling_quota_unreadable_total", {"pool": "acme"}) == 1
    assert (h.scaler.pools["acme"].last_decision or {})["quota_error"] == "the registry store is down"


async def test_every_change_is_in_the_history_newest_first() -> None:
    h = Harness({"p": pool(cooldown_up=1)})
    for load in (5, 50, 50, 500):
        await h.step("p", 10, inflight=load)
    page = await h.scaler.history.page("p", 10, None)
    assert [(d["from"], d["to"]) for d in page if d["from"] != d["to"]] == [(3, 5), (2, 3), (1, 2)]
    assert page[0]["signals"]["inflight"] == 500 and page[0]["ts"] == h.clock.time()
    older = await h.scaler.history.page("p", 10, page[1]["id"])
    assert [d["id"] for d in older] == [d["id"] for d in page[2:]]


def test_a_decision_for_each_of_2000_pools_takes_under_50_ms() -> None:
    pools = [
        pool(targets={"inflight_per_replica": 4, "p95_latency_ms": 800, "upstream_429_per_minute": 5}, max_replicas=99)
        for _ in range(2000)
    ]
    signals = Signals(processes=8, inflight=300, queued=4, p95_latency_ms=900.0, upstream_429_per_minute=1.0)
    began = time.perf_counter()
    decisions = [decide(p, 10, signals, 1000.0, None, 2000.0) for p in pools]
    per_decision = (time.perf_counter() - began) / len(pools)
    assert all(d.desired == 15 for d in decisions)
    assert per_decision < 0.050


def test_bad_scaling_values_fail_at_start_naming_the_field() -> None:
    doc = gateway_config(
        "http://127.0.0.1:9/v1",
        scaling={
            "pools": {
                "p": {"model": "nope", "targets": {}, "scale_down_factor": 2, "cooldown_up": "soon"},
                "q": {"model": "gpt-4o-mini", "targets": {"queue_per_replica": 2}, "actuator": {"type": "kubernetes"}},
            }
        },
    )
    with pytest.raises(ConfigError) as caught:
        config_from_dict(doc)
    text = "\n".join(caught.value.problems)
    for where in (
        "scaling.pools.p.targets",
        "scaling.pools.p.scale_down_factor",
        "scaling.pools.p.cooldown_up",
        "scaling.pools.q.actuator.deployment",
    ):
        assert where in text, text
