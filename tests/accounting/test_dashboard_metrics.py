"""Every metric the Grafana dashboard plots is in a real scrape of the admin listener, with the value the driven state implies."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support.processes import REPO, Proc, refusing_port
from ..support.redis import RedisServer
from .conftest import (
    ACME_KEY,
    ADMIN_TOKEN,
    GLOBEX_KEY,
    UPSTREAM_KEY,
    WebhookReceiver,
    accounting_doc,
    gateway,
    post_chat,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

DASHBOARD = REPO / "config" / "grafana" / "tollgate-overview.json"
Samples = list[tuple[str, dict[str, str], float]]


def _dashboard_metrics() -> set[str]:
    """The sample names the dashboard's queries read (``tollgate_requests_total``, ``..._bucket``, ...)."""
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(orjson.loads(DASHBOARD.read_bytes()))
    return {name for expr in exprs for name in re.findall(r"\btollgate_[a-z_]+", expr)}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == want for k, want in labels.items()))


def _has(samples: Samples, name: str, **labels: str) -> bool:
    return any(n == name and all(lab.get(k) == want for k, want in labels.items()) for n, lab, _v in samples)


async def _scrape(proc: Proc) -> Samples:
    url = f"http://127.0.0.1:{proc.extra_ports['admin']}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 200
        text = await r.text()
    return [(s.name, dict(s.labels), s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def _doc(mock: Proc, redis: RedisServer, webhook: WebhookReceiver) -> dict[str, Any]:
    upstream = f"{mock.url}/v1"
    doc = accounting_doc(
        upstream,
        store={"backend": "redis", "url": redis.url},
        usage={"backend": "memory", "flush_interval": "100ms"},
        alerts={"webhook": {"url": webhook.url, "secret": "dashboard-webhook-secret-0123", "timeout": "2s"}},
        metrics={"sla": {"plans": {"enterprise": "0.001ms"}}},
        resilience={
            "breaker": {"consecutive_failures": 2, "cool_down": "60s", "cool_down_max": "120s"},
            "retries": {"max": 0},
            "health": {"enabled": True, "interval": "200ms", "timeout": "500ms", "unhealthy_after": 1},
        },
        # A rule that answers without the store when it is down: the degraded admissions.
        rules={
            "open": {"type": "request_limit", "limit": 1_000_000, "fail_mode": "fail_open", "attach": {"global": True}}
        },
    )
    doc["upstreams"] = {
        "mock": {"base_url": upstream, "api_key": UPSTREAM_KEY, "forward_headers": ["x-mock-*"]},
        "flaky": {"base_url": upstream, "api_key": UPSTREAM_KEY, "forward_headers": ["x-mock-*"]},
        "dead": {"base_url": f"http://127.0.0.1:{refusing_port()}/v1", "timeouts": {"connect": "1s"}},
    }
    doc["models"] = {
        **doc["models"],
        "flaky-model": {"deployments": [{"upstream": "flaky", "model": "gpt-4o-mini"}]},
        "dead-model": {"deployments": [{"upstream": "dead", "model": "gpt-4o-mini"}]},
    }
    return doc


async def test_every_dashboard_metric_is_scraped_with_the_value_of_the_state_driven(
    mock: Proc, own_redis: RedisServer, webhook: WebhookReceiver
) -> None:
    wanted = _dashboard_metrics()
    assert "tollgate_breaker_state" in wanted and "tollgate_deployment_healthy" in wanted, wanted
    with gateway(_doc(mock, own_redis, webhook)) as proc:
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                assert (await post_chat(s, proc, ACME_KEY, stream=i == 0))[0] == 200
            # globex's plan allows 20 requests a month: alerts at 80, 90 and 95 %, then a refusal by the quota.
            for _ in range(20):
                assert (await post_chat(s, proc, GLOBEX_KEY))[0] == 200
            assert (await post_chat(s, proc, GLOBEX_KEY))[0] == 429
            # The upstream of flaky-model fails twice in a row: its breaker opens.
            for _ in range(2):
                status, _ = await post_chat(s, proc, ACME_KEY, model="flaky-model", headers={"x-mock-status": "500"})
                assert status >= 500
            status, _ = await post_chat(s, proc, ACME_KEY, model="flaky-model")
            assert status == 503  # refused by the open breaker, without a call
            # The limiter's Redis stops: the next admission is decided without it.
            own_redis.stop()
            assert (await post_chat(s, proc, ACME_KEY))[0] == 200

        async def settled() -> Samples | None:
            got = await _scrape(proc)
            done = (
                _value(got, "tollgate_requests_total", tenant="acme", status="200") >= 6
                and _value(got, "tollgate_quota_alerts_total", tenant="globex") >= 3
                and _value(got, "tollgate_alert_webhook_deliveries_total", outcome="delivered") >= 3
                and _value(got, "tollgate_deployment_healthy", deployment="dead/gpt-4o-mini") == 0
                and _has(got, "tollgate_deployment_healthy", deployment="dead/gpt-4o-mini")
                and _value(got, "tollgate_degraded_admissions_total") >= 1
            )
            return got if done else None

        samples = await wait_until(settled, timeout=60)
        assert samples, await _scrape(proc)

    names = {n for n, _l, _v in samples}
    assert wanted <= names, sorted(wanted - names)
    # Requests, latencies, tokens and cost of the traffic sent.
    assert _value(samples, "tollgate_requests_total", tenant="globex", model="gpt-4o-mini", status="200") == 20
    assert _value(samples, "tollgate_requests_total", tenant="globex", status="429") == 1
    assert _value(samples, "tollgate_requests_total", tenant="acme", model="flaky-model", status="503") >= 1
    assert _value(samples, "tollgate_request_duration_seconds_bucket", tenant="acme", le="+Inf") >= 6
    assert _value(samples, "tollgate_time_to_first_byte_seconds_bucket", model="gpt-4o-mini", le="+Inf") >= 26
    assert _value(samples, "tollgate_upstream_duration_seconds_bucket", upstream="mock", le="+Inf") >= 26
    assert _value(samples, "tollgate_gateway_overhead_seconds_bucket", plan="enterprise", le="+Inf") >= 6
    assert _value(samples, "tollgate_tokens_total", tenant="acme", kind="completion", source="reported") > 0
    assert _value(samples, "tollgate_cost_total", tenant="acme", currency="USD") > 0
    # The plan's SLA target and the requests over it (1 µs: every one).
    assert _value(samples, "tollgate_sla_target_seconds", plan="enterprise") == pytest.approx(1e-6)
    assert _value(samples, "tollgate_sla_violations_total", plan="enterprise") >= 6
    # Breakers: 0 closed, 2 open; usable: 0 for the open breaker and for the deployment failing its probes.
    assert _value(samples, "tollgate_breaker_state", deployment="mock/gpt-4o-mini") == 0
    assert _value(samples, "tollgate_breaker_state", deployment="flaky/gpt-4o-mini") == 2
    assert _value(samples, "tollgate_deployment_healthy", deployment="mock/gpt-4o-mini") == 1
    assert _value(samples, "tollgate_deployment_healthy", deployment="flaky/gpt-4o-mini") == 0
    assert _value(samples, "tollgate_deployment_healthy", deployment="dead/gpt-4o-mini") == 0
    # Limits, the store outage, alerts and the accounting's own health.
    assert _value(samples, "tollgate_limit_decisions_total", outcome="refused") >= 1
    assert _value(samples, "tollgate_degraded_admissions_total", rule="open") >= 1
    assert _value(samples, "tollgate_quota_alerts_total", tenant="globex", quota="monthly_requests") == 3
    assert _value(samples, "tollgate_alert_webhook_deliveries_total", outcome="delivered") == 3
    assert _has(samples, "tollgate_queue_depth", queue="accounting")
    assert _value(samples, "tollgate_in_flight_requests") == 0  # nothing is being served while it scrapes
    assert _value(samples, "tollgate_accounting_dropped_records_total") == 0
    assert _value(samples, "tollgate_accounting_flushes_total", outcome="ok") >= 1
