"""Identity through a real gateway process in front of the mock upstream: 401/403 before any upstream call."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from ..support.processes import Proc, gateway_process
from .conftest import ACME_KEY, GLOBEX_KEY, SCOPED_KEY, SLEEPY_KEY, identity_doc

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(mock: Proc) -> Iterator[Proc]:
    doc = identity_doc(f"{mock.url}/v1", guard={"max_header_bytes": "4MiB"})
    with gateway_process(doc) as proc:
        yield proc


async def _post(
    gateway: Proc, headers: dict[str, str], body: dict[str, Any] = CHAT, path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(f"{gateway.url}{path}", json=body, headers=headers) as r:
        return r.status, await r.json()


async def _upstream_calls(mock: Proc) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{mock.url}/_mock/requests") as r:
        data = await r.json()
    return len(data["requests"] if isinstance(data, dict) else data)


async def test_a_valid_key_reaches_the_upstream_and_its_credential_is_not_forwarded(gateway: Proc, mock: Proc) -> None:
    status, body = await _post(gateway, {"Authorization": f"Bearer {ACME_KEY}"})
    assert status == 200, body
    async with aiohttp.ClientSession() as s, s.get(f"{mock.url}/_mock/requests") as r:
        text = await r.text()
    assert ACME_KEY not in text


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("tg_completely-wrong-key-0123456789abcdefghij", id="wrong"),
        pytest.param(ACME_KEY[:-1] + ("x" if ACME_KEY[-1] != "x" else "y"), id="one-character-off"),
        pytest.param("", id="empty"),
        pytest.param("k" * (1024 * 1024), id="1MB"),
    ],
)
async def test_bad_keys_are_401_and_never_reach_the_upstream(gateway: Proc, mock: Proc, key: str) -> None:
    before = await _upstream_calls(mock)
    for headers in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
        status, body = await _post(gateway, headers)
        assert status == 401, body
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "invalid_api_key"
        assert key[:20] not in body["error"]["message"] or not key
    assert await _upstream_calls(mock) == before
    assert "tg_" not in gateway.log()


async def test_no_credential_is_401_and_suspended_tenant_is_403(gateway: Proc) -> None:
    status, body = await _post(gateway, {})
    assert status == 401 and "API key" in body["error"]["message"]
    status, body = await _post(gateway, {"Authorization": f"Bearer {SLEEPY_KEY}"})
    assert (
        status == 403 and body["error"]["type"] == "invalid_request_error" and "suspended" in body["error"]["message"]
    )


async def test_spoofed_tenant_header_subdomain_or_query_is_403_never_another_tenant(gateway: Proc, mock: Proc) -> None:
    before = await _upstream_calls(mock)
    for headers, path in (
        ({"X-Tenant-ID": "acme"}, "/v1/chat/completions"),
        ({"Host": "acme.llm.example.com"}, "/v1/chat/completions"),
        ({}, "/v1/chat/completions?tenant=acme"),
    ):
        status, body = await _post(gateway, {"Authorization": f"Bearer {GLOBEX_KEY}", **headers}, path=path)
        assert status == 403 and body["error"]["code"] == "tenant_mismatch", body
        # ... and alone, on this untrusted listener, the claim identifies nobody.
        status, body = await _post(gateway, headers, path=path)
        assert status == 401, body
    assert await _upstream_calls(mock) == before


async def test_forged_jwt_with_alg_none_is_401(gateway: Proc) -> None:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none'})}.{b64({'tenant': 'acme', 'exp': int(time.time()) + 60})}."
    status, _body = await _post(gateway, {"Authorization": f"Bearer {token}"})
    assert status == 401


async def test_model_outside_the_key_scope_is_403_and_hidden_from_the_model_list(gateway: Proc) -> None:
    status, body = await _post(gateway, {"Authorization": f"Bearer {SCOPED_KEY}"}, {**CHAT, "model": "gpt-4o"})
    assert status == 403 and body["error"]["code"] == "model_not_allowed"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {SCOPED_KEY}"}) as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["gpt-4o-mini"]
        async with s.get(f"{gateway.url}/v1/models/gpt-4o", headers={"Authorization": f"Bearer {SCOPED_KEY}"}) as r:
            assert r.status == 404
        async with s.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {ACME_KEY}"}) as r:
            assert len((await r.json())["data"]) == 3
        async with s.get(f"{gateway.url}/v1/models") as r:
            assert r.status == 401


async def test_admin_routes_are_not_reachable_through_the_public_listener(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        for method, path in (
            ("GET", "/admin/tenants"),
            ("GET", "/admin/openapi.json"),
            ("POST", "/admin/keys/acme-main/revoke"),
        ):
            async with s.request(method, f"{gateway.url}{path}", headers={"Authorization": f"Bearer {ACME_KEY}"}) as r:
                assert r.status == 404
