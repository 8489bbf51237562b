"""A fallback never serves a tenant a model it may not use."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from ..support.processes import gateway_config, gateway_process, mock_upstream_process

pytestmark = pytest.mark.process

OPEN_KEY = "tg_fallback_open_0123456789abcdefghijklmn"
NARROW_KEY = "tg_fallback_narrow_0123456789abcdefghijkl"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_fallback_models_outside_a_tenants_allowed_models_are_skipped() -> None:
    with mock_upstream_process() as mock:
        config = gateway_config(
            f"{mock.url}/v1",
            models={
                "primary": {"fallbacks": ["backup"], "deployments": [{"upstream": "mock"}]},
                "backup": {"deployments": [{"upstream": "mock"}]},
            },
            identity={"chain": ["api_key"]},
            tenants={
                "open": {"plan": "enterprise", "keys": [{"id": "open-1", "sha256": sha(OPEN_KEY)}]},
                "narrow": {
                    "plan": "enterprise",
                    "allowed_models": ["primary"],
                    "keys": [{"id": "narrow-1", "sha256": sha(NARROW_KEY)}],
                },
            },
            resilience={"retries": {"max": 1, "backoff_base": "1ms"}},
        )
        with gateway_process(config) as gw:
            body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}]}
            failing = {"x-mock-status": "503"}  # every attempt fails, so the fallback chain is walked
            async with aiohttp.ClientSession() as s:
                narrow = await attempt_models(
                    s, gw.url, mock.url, body, {**failing, "Authorization": f"Bearer {NARROW_KEY}"}
                )
                wide = await attempt_models(
                    s, gw.url, mock.url, body, {**failing, "Authorization": f"Bearer {OPEN_KEY}"}
                )
    assert narrow and set(narrow) == {"primary"}  # never sent to "backup", which it may not use
    assert "backup" in wide  # the same failure walks the chain for a tenant that may use it


async def attempt_models(
    s: aiohttp.ClientSession, gateway: str, mock: str, body: dict[str, object], headers: dict[str, str]
) -> list[str]:
    """The upstream model of every attempt one request made."""
    async with s.delete(f"{mock}/_mock/requests") as r:
        await r.read()
    async with s.post(f"{gateway}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 503
    async with s.get(f"{mock}/_mock/requests") as r:
        seen = await r.json()
    requests = seen["requests"] if isinstance(seen, dict) else seen
    return [req["body"]["model"] for req in requests]
