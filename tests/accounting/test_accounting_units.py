"""Accounting in-process: config sections, prices and cost rules, alert claims shared by two processes' stores, bounds."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tollgate.accounting import Accounting
from tollgate.accounting.metrics import GatewayMetrics
from tollgate.accounting.pricing import Pricing
from tollgate.accounting.records import Record, fields_of
from tollgate.clock import SystemClock
from tollgate.config import ConfigError, config_from_dict
from tollgate.config.accounting import CostRule, MetricsConfig, Price, PricingConfig
from tollgate.config.identity import Limits
from tollgate.identity.directory import Principal
from tollgate.limiter import build_limiter
from tollgate.pipeline.account import AccountDeps, account, capture
from tollgate.policy.settlement import Settler
from tollgate.upstream.usage import Usage

from ..support.contexts import request_context

BASE: dict[str, Any] = {
    "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
    "models": {
        "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
        "gpt-4o": {"deployments": [{"upstream": "mock", "model": "gpt-4o-2024"}]},
    },
}
FULL = {
    "usage": {
        "backend": "memory",
        "flush_interval": "500ms",
        "batch_size": 200,
        "max_pending": 5000,
        "daily_ttl": "40d",
        "monthly_ttl": "400d",
    },
    "pricing": {
        "currency": "EUR",
        "models": {
            "gpt-4o-mini": {"input_per_1k": 0.15, "output_per_1k": 0.6},
            "gpt-4o-2024": {"input_per_1k": 2.5, "output_per_1k": 10},
        },
        "default": {"input_per_1k": 1, "output_per_1k": 1},
        "resources": [{"resource": "requests", "unit_cost": 0.002, "billing_unit": 1000, "enabled": True}],
    },
    "quotas": {"plans": {"personal": {"monthly_spend": 50}}, "tenants": {"acme": {"monthly_spend": 5000}}},
    "alerts": {
        "thresholds": [{"percent": 50, "severity": "info"}, {"percent": 100, "severity": "critical"}],
        "webhook": {
            "url": "https://hooks.example.com/x",
            "secret": "0123456789abcdef",
            "timeout": "2s",
            "retries": 2,
            "backoff": "1s",
        },
    },
    "metrics": {
        "tenant_labels": "top",
        "top_n": 20,
        "tenants": ["acme"],
        "sla": {"default": "5ms", "plans": {"enterprise": "2ms"}},
    },
    "access_log": {"path": "-", "sample": 0.25, "errors": True},
    "audit": {"backend": "memory", "max_entries": 1000, "auth_failure_burst": 10, "auth_failure_window": "30s"},
}


def test_every_accounting_section_parses_into_the_config() -> None:
    acc = config_from_dict({**BASE, **FULL}).accounting
    assert acc.usage.flush_interval == 0.5 and acc.usage.batch_size == 200
    assert acc.pricing.currency == "EUR" and acc.pricing.models["gpt-4o-2024"] == Price(2.5, 10.0)
    assert acc.quotas.spend_limit("acme", "personal") == 5000 and acc.quotas.spend_limit("globex", "personal") == 50
    assert [(t.percent, t.severity) for t in acc.alerts.thresholds] == [(50.0, "info"), (100.0, "critical")]
    assert acc.alerts.webhook is not None and acc.alerts.webhook.retries == 2
    assert acc.metrics.sla_target("enterprise") == 0.002 and acc.metrics.sla_target("personal") == 0.005
    assert acc.access_log.sample == 0.25 and acc.audit.auth_failure_window == 30.0


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"pricing": {"models": {"gpt-5": {"input_per_1k": 1}}}}, "pricing.models.gpt-5: unknown model"),
        ({"pricing": {"models": {"gpt-4o": {"input": 1}}}}, "pricing.models.gpt-4o.input: unknown key"),
        (
            {"pricing": {"resources": [{"resource": "seconds", "unit_cost": 1}]}},
            "pricing.resources[0].resource: must be one of",
        ),
        ({"alerts": {"webhook": {"url": "ftp://x", "secret": "short"}}}, "alerts.webhook.url: must be an absolute"),
        (
            {"alerts": {"webhook": {"url": "http://x/y", "secret": "short"}}},
            "alerts.webhook.secret: must be at least 16",
        ),
        ({"usage": {"backend": "file"}}, "usage.path: is required"),
        ({"usage": {"daily_ttl": "1h"}}, "usage.daily_ttl: must be at least 2d"),
        ({"usage": {"max_end_users": -1}}, "usage.max_end_users: must be >= 0"),
        ({"metrics": {"tenant_labels": "some"}}, "metrics.tenant_labels: must be one of"),
        ({"access_log": {"sample": 2}}, "access_log.sample: must be <= 1.0"),
        (
            {"metrics": {"sla": {"plans": {"enterprise": "fast"}}}},
            "metrics.sla.plans.enterprise: must be a positive duration",
        ),
    ],
)
def test_a_bad_accounting_section_is_refused_with_its_field_path(section: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, **section})
    assert any(line.startswith(problem) for line in exc.value.problems), exc.value.problems


def test_cost_is_the_price_table_plus_enabled_cost_rules_in_exact_nanos() -> None:
    pricing = Pricing(
        PricingConfig(
            models={"m": Price(0.15, 0.6)},
            default=Price(1.0, 2.0),
            resources=(
                CostRule("requests", 0.002, billing_unit=1000),
                CostRule("total_tokens", 1.0, billing_unit=1_000_000, models=("m",)),
                CostRule("requests", 99.0, enabled=False),
            ),
        )
    )
    # 1000 prompt tokens at 0.15/1K + 500 completion at 0.6/1K + one request at 0.002/1000 + 1500 tokens at 1/1M
    assert pricing.cost_nanos("m", 1000, 500) == 150_000_000 + 300_000_000 + 2_000 + 1_500_000
    # an unpriced model takes the default price; the model-scoped rule does not apply to it
    assert pricing.cost_nanos("other", 1000, 1000) == 1_000_000_000 + 2_000_000_000 + 2_000
    assert sum(pricing.cost_nanos("m", 7, 3) for _ in range(1_000_000 // 1000)) == 1000 * pricing.cost_nanos("m", 7, 3)
    assert pricing.priced_model("m", "public-name") == "m" and pricing.priced_model("unpriced", "public") == "public"
    # the deployment's model name (what the provider ran) wins where it has a price of its own
    assert pricing.priced_model("public", "public", "m") == "m"
    assert pricing.priced_model("m", "asked", "unpriced-deployment-model") == "m"


def _principal(tenant: str, plan: str = "metered", monthly_requests: int | None = 10) -> Principal:
    return Principal(
        tenant=tenant,
        plan=plan,
        limits=Limits(monthly_requests=monthly_requests),
        allowed_models=None,
        key_id=f"{tenant}-key",
    )


def _ctx(principal: Principal | None, *, status: int = 200, usage: Usage | None = None, started: float = 0.0) -> Any:
    return request_context(
        started=started,
        body=b"{}",
        model="gpt-4o-mini",
        model_served="gpt-4o-mini",
        upstream_name="mock",
        status=status,
        first_byte_at=started + 0.01,
        finished_at=started + 0.02,
        usage=usage or Usage(10, 5, True),
        principal=principal,
        attempts=1,
    )


def _record(acc: Accounting, ctx: Any, end: float | None = None) -> Record:
    """What the account stage hands to accounting for ``ctx``, ending now on the loop's clock unless ``end`` says."""
    return capture(ctx, asyncio.get_running_loop().time() if end is None else end, acc.wall())


def _accounting(tmp_path: Path, **sections: Any) -> Accounting:
    doc = {
        **BASE,
        "usage": {"backend": "file", "path": str(tmp_path / "usage.json"), "flush_interval": "1h"},
        "access_log": {"enabled": False},
        **sections,
    }
    return Accounting(config_from_dict(doc))


@pytest.mark.parametrize(
    "resources",
    [(), (CostRule("requests", 0.002, billing_unit=1000, models=("m",)),), (CostRule("requests", 0.002),)],
    ids=["no-rules", "a-rule-for-one-model", "a-rule-for-every-model"],
)
@pytest.mark.parametrize("model", ["m", "plain", "unpriced", None])
def test_a_records_cost_is_what_cost_nanos_gives_whichever_way_the_flusher_prices_it(
    resources: tuple[CostRule, ...], model: str | None
) -> None:
    """fields_of prices a model without cost rules inline, the default price of unpriced names included."""
    pricing = Pricing(
        PricingConfig(
            models={"m": Price(0.15, 0.6), "plain": Price(0.5, 1.5)}, default=Price(1.1, 2.3), resources=resources
        )
    )
    ctx = _ctx(_principal("t"), usage=Usage(1234, 567, True))
    ctx.model = ctx.model_served = model
    cost = fields_of(capture(ctx, 1.0, 1_700_000_000.0), pricing)[25]
    assert cost == pricing.cost_nanos(model, 1234, 567) > 0


async def test_alerts_fire_once_per_threshold_when_two_processes_share_the_embedded_usage_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = _accounting(tmp_path), _accounting(tmp_path)
    for acc in (first, second):
        await acc.start()
    try:
        p = _principal("globex")
        for i in range(12):  # 10 allowed a month; both processes see every crossing
            acc = first if i % 2 else second
            acc.record(_record(acc, _ctx(p)))
            await acc.flush()
        for acc in (first, second):
            assert (await acc.quota("globex"))["quotas"] == [
                {"quota": "monthly_requests", "used": 12, "limit": 10, "percent": 120.0}
            ]
    finally:
        await first.close()
        await second.close()
    # Every alert fired, by either process, is one line of the alerts log.
    fired = [(r.event["quota"], r.event["threshold_percent"]) for r in caplog.records if r.name == "tollgate.alerts"]  # type: ignore[attr-defined]
    assert sorted(fired) == [("monthly_requests", 80.0), ("monthly_requests", 90.0), ("monthly_requests", 95.0)]
    reopened = _accounting(tmp_path)
    fields, days = await reopened.store.read("globex", time.strftime("%Y-%m", time.gmtime()))
    assert fields["requests"] == 12 and sum(d["requests"] for d in days.values()) == 12


async def test_record_never_raises_and_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    acc = _accounting(tmp_path, usage={"backend": "memory", "max_pending": 3})

    def broken_wall() -> float:
        raise RuntimeError("no wall clock")

    deps = AccountDeps(settler=Settler(build_limiter()), accounting=acc, wall=broken_wall, clock=SystemClock())
    account(_ctx(_principal("acme")), deps)  # a record that cannot be made: logged, not raised, not queued
    assert acc.pending == 0
    for _ in range(5):
        acc.record(_record(acc, _ctx(_principal("acme"))))
    assert acc.pending == 3 and acc.dropped == 2
    assert await acc.flush() == 3
    assert acc.metrics.sample_value("tollgate_accounting_dropped_records_total") == 2.0
    await acc.close()


def test_tenant_labels_are_bounded_to_the_top_n_first_seen_plus_the_listed_ones() -> None:
    metrics = GatewayMetrics(MetricsConfig(tenant_labels="top", top_n=2, tenants=("vip",)))
    labels = [metrics.tenant_label(t) for t in ("a", "b", "c", "vip", "a", "d")]
    assert labels == ["a", "b", "other", "vip", "a", "other"]


async def test_gateway_overhead_above_the_plans_p99_target_is_counted_as_an_sla_violation(tmp_path: Path) -> None:
    acc = _accounting(tmp_path, usage={"backend": "memory"}, metrics={"sla": {"plans": {"metered": "5ms"}}})
    acc.record(
        _record(acc, _ctx(_principal("globex")), end=0.030)
    )  # the request ended 10 ms after the upstream finished
    acc.record(_record(acc, _ctx(_principal("globex")), end=0.021))  # 1 ms after
    await acc.flush()
    assert acc.metrics.sample_value("tollgate_sla_violations_total", {"plan": "metered"}) == 1.0
    report = acc.sla.report(acc.current.metrics)["plans"]["metered"]
    assert report["requests"] == 2 and report["violations"] == 1 and report["target_p99_ms"] == 5.0
    await acc.close()


def test_every_series_the_grafana_dashboard_queries_is_one_the_gateway_exports() -> None:
    import json
    import re

    from ..support.processes import REPO

    text = (REPO / "config" / "grafana" / "tollgate-overview.json").read_text()
    json.loads(text)
    queried = set(re.findall(r"tollgate_[a-z_]+", text)) - {"tollgate_overview"}
    metrics = GatewayMetrics(MetricsConfig())
    exported = {s.name for family in metrics.registry.collect() for s in family.samples} | {
        f"{family.name}{suffix}"
        for family in metrics.registry.collect()
        for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }
    assert queried and queried <= exported, sorted(queried - exported)


class _Version:
    """A config version as the model labels read it: its models and their deployments' models."""

    def __init__(self, *names: str) -> None:
        self.models = {name: SimpleNamespace(deployments=[SimpleNamespace(model=f"{name}-dep")]) for name in names}


def test_the_model_labels_follow_a_reload_and_keep_no_replaced_version_alive() -> None:
    """The labels are computed once per version; the version they were computed from is freed once replaced, even
    before anything asks for the labels again (a cache holding it would keep a whole tenant table alive until the
    next flush, for as long as an idle gateway makes none)."""
    old = _Version("a")
    holder = SimpleNamespace(config=old)
    acc = Accounting(old, state=holder)
    assert acc.models() == frozenset({"a", "a-dep"})
    assert acc.models() is acc.models()  # once per version
    gone = weakref.ref(old)
    holder.config = _Version("b")
    del old
    gc.collect()
    assert gone() is None, "the replaced config version is still referenced"
    assert acc.models() == frozenset({"b", "b-dep"})
