"""Metric labels come from the config, never from what a caller typed: made-up model names add no series and grow no table."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tollgate.accounting.pricing import Pricing
from tollgate.admin import Probes, make_admin_app
from tollgate.config import config_from_dict
from tollgate.config.accounting import CostRule, Price, PricingConfig
from tollgate.process.public import healthz, make_public_server, public_lifecycle, readyz
from tollgate.process.server import reload_here
from tollgate.runtime.state import GatewayState

from .conftest import ACME_KEY, ADMIN_TOKEN, PRICES, sha256_hex

Client = TestClient[web.Request, web.Application]
CONFIGURED = {"gpt-4o-mini", "gpt-4o", "gpt-4o-2024-08-06"}


def _doc(mock_url: str) -> dict[str, Any]:
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        "upstreams": {"mock": {"base_url": f"{mock_url}/v1"}},
        "models": {
            "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
            "gpt-4o": {"deployments": [{"upstream": "mock", "model": "gpt-4o-2024-08-06"}]},
        },
        "identity": {"chain": ["api_key"]},
        "tenants": {"acme": {"plan": "enterprise", "keys": [{"id": "acme-main", "sha256": sha256_hex(ACME_KEY)}]}},
        "pricing": {"currency": "USD", "models": dict(PRICES)},  # a copy: a test below edits it
        "usage": {"backend": "memory", "flush_interval": "1h"},
        "metrics": {"tenant_labels": "top", "top_n": 5},
        "access_log": {"enabled": False},
    }


@pytest.fixture
async def running(mock_url: str, aiohttp_client: Any) -> AsyncIterator[tuple[str, GatewayState, Client]]:
    """An in-process gateway: the public listener on a real port, the admin application beside it."""
    state = GatewayState(config_from_dict(_doc(mock_url)))
    async with public_lifecycle(state):
        server = make_public_server(state)
        port = await server.start("127.0.0.1", 0)
        try:
            admin = await aiohttp_client(make_admin_app(state, probes=Probes(healthz, readyz), reload=reload_here))
            yield f"http://127.0.0.1:{port}", state, admin
        finally:
            await server.shutdown(5.0)


async def _scrape(admin: Client) -> list[tuple[str, dict[str, str]]]:
    """Every series of a real ``/metrics`` answer (one per sample line)."""
    r = await admin.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status == 200, await r.text()
    text = await r.text()
    series = [(s.name, dict(s.labels)) for f in text_string_to_metric_families(text) for s in f.samples]
    assert len(series) == sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return series


async def _send(session: aiohttp.ClientSession, url: str, model: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        await r.read()
        return r.status


async def test_a_thousand_requests_with_made_up_models_add_no_series_and_grow_no_table(
    running: tuple[str, GatewayState, Client],
) -> None:
    url, state, admin = running
    accounting = state.accounting
    async with aiohttp.ClientSession() as s:
        # Every kind of outcome once, so that the baseline holds each label set the flood below could reach.
        assert await _send(s, url, "gpt-4o-mini", ACME_KEY) == 200
        assert await _send(s, url, "gpt-4o", ACME_KEY) == 200
        assert await _send(s, url, "made-up-" + secrets.token_hex(8), None) == 401
        assert await _send(s, url, "made-up-" + secrets.token_hex(8), ACME_KEY) == 404
        await accounting.flush()
        before = await _scrape(admin)
        rates, children = accounting.pricing().compiled_rates, len(accounting.metrics._children)

        gate = asyncio.Semaphore(20)
        names = ["made-up-" + secrets.token_hex(8) for _ in range(1100)]

        async def one(i: int, name: str) -> int:
            async with gate:
                return await _send(s, url, name, ACME_KEY if i % 11 == 0 else None)

        statuses = await asyncio.gather(*(one(i, name) for i, name in enumerate(names)))
    assert statuses.count(401) == 1000 and statuses.count(404) == 100
    await accounting.flush()
    after = await _scrape(admin)
    assert accounting.records_flushed == 1104

    assert len(after) <= len(before) + 2, sorted(set(map(repr, after)) - set(map(repr, before)))[:10]
    models = {labels["model"] for _name, labels in after if "model" in labels}
    assert models <= CONFIGURED | {"other", "unknown"}, models
    assert "other" in models  # the made-up names are counted, under one label
    requests_other = sum(
        1 for name, labels in after if name == "tollgate_requests_total" and labels.get("model") == "other"
    )
    assert requests_other == 2  # 401 and 404: one series each, whatever the names
    # No table keyed by a model name grew: the price table, the cached metric children, the chosen tenants.
    assert accounting.pricing().compiled_rates == rates
    assert len(accounting.metrics._children) == children
    assert len(accounting.metrics.tenant_label._chosen) <= 2  # acme (anonymous always has its own label)


def test_the_price_table_holds_only_the_models_the_config_names() -> None:
    config = PricingConfig(
        currency="USD",
        models={"gpt-4o": Price(2.5, 10.0)},
        default=Price(1.0, 2.0),
        resources=(CostRule("requests", 0.5, 1000, True, ("special",)), CostRule("prompt_tokens", 1.0, 1000, True)),
    )
    pricing = Pricing(config)
    assert pricing.compiled_rates == 2  # gpt-4o, and "special" named by a cost rule
    for i in range(500):
        # An unnamed model: the default price, plus only the rules that apply to every model.
        assert pricing.cost_nanos(f"made-up-{i}", 1000, 1000) == 1_000_000_000 + 2_000_000_000 + 1_000_000_000
    assert pricing.compiled_rates == 2
    assert pricing.cost_nanos("special", 0, 0) == 500_000
    assert pricing.cost_nanos("gpt-4o", 1000, 0) == 2_500_000_000 + 1_000_000_000


async def test_a_deployment_that_leaves_the_config_leaves_the_scrape(mock_url: str) -> None:
    doc = _doc(mock_url)
    state = GatewayState(config_from_dict(doc))
    async with public_lifecycle(state):
        metrics = state.accounting.metrics
        text = metrics.exposition().decode()
        assert 'tollgate_breaker_state{deployment="mock/gpt-4o-2024-08-06"} 0.0' in text
        assert 'tollgate_deployment_healthy{deployment="mock/gpt-4o-2024-08-06"} 1.0' in text
        del doc["models"]["gpt-4o"]
        del doc["pricing"]["models"]["gpt-4o"]
        await state.apply(config_from_dict(doc))
        text = metrics.exposition().decode()
        assert "mock/gpt-4o-2024-08-06" not in text
        assert 'tollgate_breaker_state{deployment="mock/gpt-4o-mini"} 0.0' in text
