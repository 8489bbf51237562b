"""Tenant self-service on the public listener: a key's own info, its tenant's usage and limits, its tenant's keys.

Two tenants (acme, globex), each with an admin key and a plain key, on an
in-process gateway (real HTTP on loopback) in front of the in-process mock
upstream; every route is tried across tenants. Revocation across processes
uses two gateways sharing one file registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tollgate.runtime.state import GatewayState

from .resilience.helpers import gateway

KEYS = {
    "acme-admin": "tg_acme_admin_key_0123456789abcdef",
    "acme-user": "tg_acme_user_key_0123456789abcdef",
    "globex-admin": "tg_globex_admin_key_0123456789abcdef",
    "globex-user": "tg_globex_user_key_0123456789abcdef",
}
HS_SECRET = "self-service-test-secret-0123456789abcdef"
PER_MINUTE = 100
MONTHLY = 10_000
KEY_PER_MINUTE = 40


def _key(key_id: str, tenant: str, admin: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": key_id, "sha256": hashlib.sha256(KEYS[key_id].encode()).hexdigest(), "name": key_id}
    if admin:
        doc["admin"] = True
    return doc


def config_doc(mock_url: str, registry: Path) -> dict[str, Any]:
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "identity": {
            "chain": ["api_key", "jwt"],
            "jwt": {"keys": [{"kid": "hs", "algorithm": "HS256", "secret": HS_SECRET}]},
        },
        "registry": {"file": str(registry), "poll_interval": "50ms"},
        "plans": {
            "team": {"monthly_requests": MONTHLY, "concurrency": 10, "requests_per_minute": PER_MINUTE},
            "narrow": {"monthly_requests": MONTHLY, "concurrency": 10, "allowed_models": ["gpt-4o"]},
        },
        "tenants": {
            "acme": {"plan": "team", "keys": [_key("acme-admin", "acme", True), _key("acme-user", "acme")]},
            "globex": {"plan": "narrow", "keys": [_key("globex-admin", "globex", True), _key("globex-user", "globex")]},
        },
        "upstreams": {"mock": {"base_url": f"{mock_url}/v1"}},
        "models": {
            "gpt-4o": {"deployments": [{"upstream": "mock"}]},
            "gpt-mini": {"deployments": [{"upstream": "mock"}]},
        },
        "rules": {
            "per-key": {
                "type": "request_limit",
                "limit": KEY_PER_MINUTE,
                "per": "minute",
                "scope": ["key"],
                "attach": {"global": True},
            }
        },
    }


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.json"


@pytest.fixture
async def gw(mock_url: str, registry_path: Path) -> AsyncIterator[tuple[str, GatewayState]]:
    async with gateway(config_doc(mock_url, registry_path)) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(
    s: aiohttp.ClientSession, url: str, method: str, path: str, key: str | None = None, body: Any = None
) -> tuple[int, Any]:
    headers = _auth(key) if key is not None else {}
    async with s.request(method, url + path, headers=headers, json=body) as r:
        return r.status, await r.json(content_type=None)


async def chat(s: aiohttp.ClientSession, url: str, key: str, model: str = "gpt-4o") -> tuple[int, Any]:
    return await call(
        s,
        url,
        "POST",
        "/v1/chat/completions",
        KEYS.get(key, key),
        {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )


def _limit(limits: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(x for x in limits if x["name"] == name)


def _error(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    return body["error"]  # type: ignore[no-any-return]


# -- reading -----------------------------------------------------------------------------


async def test_key_info_describes_the_calling_key_with_its_limits_and_never_its_secret(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, _state = gw
    status, body = await call(session, url, "GET", "/v1/tollgate/key", KEYS["acme-user"])
    assert status == 200
    assert (body["id"], body["name"], body["tenant"], body["plan"]) == ("acme-user", "acme-user", "acme", "team")
    assert body["admin"] is False and body["expires"] is None and body["identified_by"] == "api_key"
    assert body["models"] == ["gpt-4o", "gpt-mini"]
    names = {x["name"] for x in body["limits"]}
    assert {"per-key", "plan.requests_per_minute", "plan.monthly_requests", "plan.concurrency"} <= names
    per_minute = _limit(body["limits"], "plan.requests_per_minute")
    assert (per_minute["kind"], per_minute["limit"], per_minute["window"]) == ("request_limit", PER_MINUTE, "minute")
    assert per_minute["remaining"] == PER_MINUTE
    text = str(body)
    assert KEYS["acme-user"] not in text and "key_hash" not in text
    assert hashlib.sha256(KEYS["acme-user"].encode()).hexdigest() not in text

    status, body = await call(session, url, "GET", "/v1/tollgate/key", KEYS["globex-admin"])
    assert (status, body["tenant"], body["id"], body["admin"]) == (200, "globex", "globex-admin", True)
    assert body["models"] == ["gpt-4o"]


async def test_remaining_limits_decrease_after_requests_for_the_caller_only(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, _state = gw
    for _ in range(3):
        assert (await chat(session, url, "acme-user"))[0] == 200
    _, mine = await call(session, url, "GET", "/v1/tollgate/key", KEYS["acme-user"])
    assert _limit(mine["limits"], "per-key")["remaining"] == KEY_PER_MINUTE - 3
    assert _limit(mine["limits"], "plan.requests_per_minute")["remaining"] == PER_MINUTE - 3
    assert _limit(mine["limits"], "plan.monthly_requests")["remaining"] == MONTHLY - 3
    assert _limit(mine["limits"], "per-key")["reset_ms"] > 0  # a sliding window: up to two windows away
    # The same tenant's other key shares the tenant's limits, not the per-key counter.
    _, sibling = await call(session, url, "GET", "/v1/tollgate/key", KEYS["acme-admin"])
    assert _limit(sibling["limits"], "per-key")["remaining"] == KEY_PER_MINUTE
    assert _limit(sibling["limits"], "plan.requests_per_minute")["remaining"] == PER_MINUTE - 3
    # Another tenant's counters did not move.
    _, other = await call(session, url, "GET", "/v1/tollgate/key", KEYS["globex-user"])
    assert _limit(other["limits"], "per-key")["remaining"] == KEY_PER_MINUTE
    assert _limit(other["limits"], "plan.monthly_requests")["remaining"] == MONTHLY


async def test_usage_matches_the_requests_made_and_shows_only_the_callers_tenant(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, state = gw
    tokens = 0
    for key, model in (("acme-user", "gpt-4o"), ("acme-admin", "gpt-4o"), ("acme-user", "gpt-mini")):
        status, answer = await chat(session, url, key, model)
        assert status == 200
        tokens += answer["usage"]["total_tokens"]
    assert (await chat(session, url, "globex-user"))[0] == 200
    await state.accounting.flush()

    status, usage = await call(session, url, "GET", "/v1/tollgate/usage", KEYS["acme-user"])
    assert status == 200
    assert (usage["tenant"], usage["period"]) == ("acme", time.strftime("%Y-%m", time.gmtime()))
    assert usage["requests"] == 3 and usage["total_tokens"] == tokens
    assert {m: v["requests"] for m, v in usage["by_model"].items()} == {"gpt-4o": 2, "gpt-mini": 1}
    quota = next(q for q in usage["quotas"] if q["quota"] == "monthly_requests")
    assert (quota["used"], quota["limit"], quota["remaining"]) == (3, MONTHLY, MONTHLY - 3)
    assert _limit(usage["limits"], "plan.requests_per_minute")["remaining"] == PER_MINUTE - 3

    _, theirs = await call(session, url, "GET", "/v1/tollgate/usage", KEYS["globex-user"])
    assert (theirs["tenant"], theirs["requests"], list(theirs["by_model"])) == ("globex", 1, ["gpt-4o"])

    _, past = await call(session, url, "GET", "/v1/tollgate/usage?month=2001-01", KEYS["acme-user"])
    assert (past["period"], past["requests"], past["by_model"]) == ("2001-01", 0, {})


# -- managing keys ------------------------------------------------------------------------


async def test_an_admin_key_creates_a_key_that_authenticates_a_chat_request_and_only_its_hash_is_stored(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession, registry_path: Path
) -> None:
    url, _state = gw
    status, created = await call(
        session, url, "POST", "/v1/tollgate/keys", KEYS["acme-admin"], {"name": "ci", "models": ["gpt-4o"]}
    )
    assert status == 201
    plaintext = created["key"]
    assert plaintext.startswith("tg_") and created["tenant"] == "acme" and created["name"] == "ci"
    assert created["models"] == ["gpt-4o"] and created["admin"] is False and "key_hash" not in created

    assert (await chat(session, url, plaintext))[0] == 200
    status, refused = await chat(session, url, plaintext, "gpt-mini")
    assert status in (403, 404) and _error(refused)["code"]  # outside the key's models
    _, info = await call(session, url, "GET", "/v1/tollgate/key", plaintext)
    assert (info["id"], info["tenant"], info["models"]) == (created["id"], "acme", ["gpt-4o"])

    stored = registry_path.read_text()
    assert plaintext not in stored and hashlib.sha256(plaintext.encode()).hexdigest() in stored
    status, listed = await call(session, url, "GET", "/v1/tollgate/keys", KEYS["acme-admin"])
    assert status == 200
    assert [k["id"] for k in listed["data"]] == sorted(["acme-admin", "acme-user", created["id"]])
    assert all("key" not in k and "key_hash" not in k for k in listed["data"])
    assert [k["admin"] for k in listed["data"] if k["id"] == "acme-admin"] == [True]


async def test_a_created_key_takes_only_fields_a_tenant_may_set(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, _state = gw
    admin = KEYS["globex-admin"]
    for body, param in (
        ({"models": ["gpt-mini"]}, "models[0]"),  # not in globex's plan
        ({"tenant": "acme"}, "tenant"),
        ({"key_hash": "sha256:" + "0" * 64}, "key_hash"),
    ):
        status, answer = await call(session, url, "POST", "/v1/tollgate/keys", admin, body)
        assert status == 400, body
        assert _error(answer)["param"] == param
    status, answer = await call(session, url, "POST", "/v1/tollgate/keys", admin, {"expires": 1_000})
    assert status == 400 and "past" in _error(answer)["message"]
    _, listed = await call(session, url, "GET", "/v1/tollgate/keys", admin)
    assert [k["id"] for k in listed["data"]] == ["globex-admin", "globex-user"]


async def test_a_key_that_is_not_its_tenants_admin_key_is_refused_403_on_every_key_route(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, _state = gw
    user = KEYS["acme-user"]
    for method, path in (
        ("GET", "/v1/tollgate/keys"),
        ("POST", "/v1/tollgate/keys"),
        ("DELETE", "/v1/tollgate/keys/acme-admin"),
        ("DELETE", "/v1/tollgate/keys/globex-user"),
    ):
        status, body = await call(session, url, method, path, user, {} if method == "POST" else None)
        assert status == 403, (method, path)
        assert _error(body)["code"] == "admin_key_required"
    assert (await chat(session, url, "acme-admin"))[0] == 200  # nothing was revoked
    _, listed = await call(session, url, "GET", "/v1/tollgate/keys", KEYS["acme-admin"])
    assert len(listed["data"]) == 2  # nothing was created


async def test_another_tenants_key_is_not_found_exactly_as_an_unknown_key_and_stays_usable(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, _state = gw
    admin = KEYS["acme-admin"]
    status, theirs = await call(session, url, "DELETE", "/v1/tollgate/keys/globex-user", admin)
    status_unknown, unknown = await call(session, url, "DELETE", "/v1/tollgate/keys/no-such-key", admin)
    assert status == status_unknown == 404
    assert _error(theirs)["code"] == _error(unknown)["code"] == "key_not_found"
    assert _error(theirs)["message"].replace("globex-user", "X") == _error(unknown)["message"].replace(
        "no-such-key", "X"
    )
    assert (await chat(session, url, "globex-user"))[0] == 200
    _, listed = await call(session, url, "GET", "/v1/tollgate/keys", KEYS["globex-admin"])
    assert {k["id"]: k["revoked"] for k in listed["data"]} == {"globex-admin": False, "globex-user": False}
    _, mine = await call(session, url, "GET", "/v1/tollgate/keys", admin)
    assert all(k["tenant"] == "acme" for k in mine["data"])


async def test_a_revoked_key_is_refused_401_by_every_gateway_process_within_the_poll_interval(
    mock_url: str, registry_path: Path, session: aiohttp.ClientSession
) -> None:
    doc = config_doc(mock_url, registry_path)
    async with gateway(doc) as (url_a, _a), gateway(doc) as (url_b, _b):
        status, created = await call(session, url_a, "POST", "/v1/tollgate/keys", KEYS["acme-admin"], {"name": "x"})
        assert status == 201
        assert await _eventually(lambda: chat(session, url_b, created["key"]), 200)
        status, revoked = await call(session, url_a, "DELETE", f"/v1/tollgate/keys/{created['id']}", KEYS["acme-admin"])
        assert (status, revoked["revoked"]) == (200, True)
        status, answer = await chat(session, url_a, created["key"])
        assert status == 401 and _error(answer)["code"] == "invalid_api_key"  # at once where it was revoked
        assert await _eventually(lambda: chat(session, url_b, created["key"]), 401)  # and on the other process
        assert (await chat(session, url_b, "acme-user"))[0] == 200


async def _eventually(attempt: Any, want: int, within: float = 10.0) -> bool:
    """True once ``attempt()`` answers ``want`` (polled: generous against a loaded machine, the interval is 50 ms)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, _body = await attempt()
        if status == want:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_admin_key_revokes_itself_only_when_told_to(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, _state = gw
    admin = KEYS["acme-admin"]
    status, successor = await call(session, url, "POST", "/v1/tollgate/keys", admin, {"admin": True})
    assert status == 201 and successor["admin"] is True
    status, body = await call(session, url, "DELETE", "/v1/tollgate/keys/acme-admin", admin)
    assert status == 400 and _error(body)["code"] == "self_revocation"
    assert (await chat(session, url, "acme-admin"))[0] == 200
    status, body = await call(session, url, "DELETE", "/v1/tollgate/keys/acme-admin?allow_self=true", admin)
    assert (status, body["revoked"]) == (200, True)
    assert (await chat(session, url, "acme-admin"))[0] == 401
    status, listed = await call(session, url, "GET", "/v1/tollgate/keys", successor["key"])
    assert status == 200 and {k["id"]: k["revoked"] for k in listed["data"]}["acme-admin"] is True


async def test_key_changes_are_audited_with_the_acting_key_and_never_the_new_key(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, state = gw
    admin = KEYS["acme-admin"]
    _, created = await call(session, url, "POST", "/v1/tollgate/keys", admin, {"name": "audited"})
    await call(session, url, "DELETE", f"/v1/tollgate/keys/{created['id']}", admin)
    await call(session, url, "DELETE", "/v1/tollgate/keys/globex-user", admin)
    await state.accounting.flush()
    events = [e for e in await state.accounting.audit.list(tenant="acme") if e["kind"] == "tenant_key_change"]
    seen = sorted((e["detail"]["method"], e["target"], e["detail"]["status"]) for e in events)
    assert seen == sorted(
        [
            ("POST", f"key:{created['id']}", 201),
            ("DELETE", f"key:{created['id']}", 200),
            ("DELETE", "key:globex-user", 404),
        ]
    )
    assert {e["actor"] for e in events} == {"key:acme-admin"}
    assert created["key"] not in str(events)


# -- other callers and errors ----------------------------------------------------------------


async def test_a_jwt_caller_reads_its_tenants_info_and_is_refused_on_key_routes(
    gw: tuple[str, GatewayState], session: aiohttp.ClientSession
) -> None:
    url, _state = gw
    token = jwt.encode(
        {"tenant": "globex", "sub": "ann", "exp": int(time.time()) + 600},
        HS_SECRET,
        algorithm="HS256",
        headers={"kid": "hs"},
    )
    status, info = await call(session, url, "GET", "/v1/tollgate/key", token)
    assert status == 200
    assert (info["id"], info["tenant"], info["plan"], info["identified_by"]) == (None, "globex", "narrow", "jwt")
    assert "plan.monthly_requests" in {x["name"] for x in info["limits"]}
    status, usage = await call(session, url, "GET", "/v1/tollgate/usage", token)
    assert (status, usage["tenant"]) == (200, "globex")
    status, body = await call(session, url, "GET", "/v1/tollgate/keys", token)
    assert status == 403 and _error(body)["code"] == "admin_key_required" and "jwt" in _error(body)["message"]


@pytest.mark.parametrize(
    ("method", "path", "key", "status", "code"),
    [
        ("GET", "/v1/tollgate/key", None, 401, None),
        ("GET", "/v1/tollgate/usage", "tg_not_a_key_of_anyone_0123456789", 401, "invalid_api_key"),
        ("GET", "/v1/tollgate/usage?month=2026-13", "acme-user", 400, "invalid_month"),
        ("POST", "/v1/tollgate/key", "acme-user", 405, None),
        ("PUT", "/v1/tollgate/keys", "acme-admin", 405, None),
        ("GET", "/v1/tollgate/nothing", "acme-user", 404, "unknown_url"),
    ],
)
async def test_errors_are_openai_shaped_with_their_status(
    gw: tuple[str, GatewayState],
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    key: str | None,
    status: int,
    code: str | None,
) -> None:
    url, _state = gw
    got, body = await call(session, url, method, path, KEYS.get(key, key) if key else None)
    assert got == status
    error = _error(body)
    if code is not None:
        assert error["code"] == code
