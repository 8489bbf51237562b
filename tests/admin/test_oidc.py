"""Sign-on to the admin API with the operator's OpenID Connect provider: JWTs checked against its JWKS, which rotates
keys without a restart; issuer, audience and algorithms are pinned; the token's role claim picks the role."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization

from tollgate.clock import ManualClock

from ..support.jwks_server import JWKS, SigningKey, claims, jwks_app
from .conftest import TOKENS, AdminFactory, Client, bearer

ISS, AUD = "https://login.example.test/", "tollgate-admin"
MakeServer = Callable[[web.Application], Awaitable[TestServer]]


def _oidc(url: str, **over: Any) -> dict[str, Any]:
    return {
        "oidc": {
            "issuer": ISS,
            "audience": AUD,
            "jwks_url": url,
            "role_claim": "groups",
            "roles_map": {"gw-admins": "admin", "gw-ops": "operator", "acme-team": "tenant_admin"},
            "leeway": "30s",
            "jwks_max_age": "10m",
            "jwks_refetch_interval": "30s",
            **over,
        }
    }


async def _whoami(client: Client, token: str) -> tuple[int, Any]:
    async with client.get("/admin/whoami", headers=bearer(token)) as r:
        return r.status, await r.json()


@pytest.fixture
async def provider(aiohttp_server: MakeServer) -> tuple[list[SigningKey], web.Application, str]:
    published = [SigningKey("k1")]
    app = jwks_app(published)
    server = await aiohttp_server(app)
    return published, app, str(server.make_url("/jwks.json"))


async def test_a_rotated_key_is_used_without_a_restart_and_a_withdrawn_one_is_refused(
    admin_app: AdminFactory, provider: tuple[list[SigningKey], web.Application, str]
) -> None:
    published, jwks, url = provider
    clock = ManualClock(wall=time.time())
    client, _state = await admin_app(admin=_oidc(url), clock=clock)
    k1 = published[0]
    old_token = k1.sign(claims(ISS, AUD, groups=["gw-admins"]))
    assert await _whoami(client, old_token) == (
        200,
        {"name": "alice@ops", "role": "admin", "tenants": None, "via": "oidc"},
    )
    assert jwks[JWKS]["fetches"] == 1

    k2 = SigningKey("k2")
    published[:] = [k2]  # the provider rotates: k1 withdrawn, k2 published
    new_token = k2.sign(claims(ISS, AUD, groups=["gw-ops"], sub="bob@ops"))
    status, _body = await _whoami(client, new_token)
    assert status == 401 and jwks[JWKS]["fetches"] == 1  # within the refetch interval: no fetch for an unknown kid
    clock.advance(31)
    assert await _whoami(client, new_token) == (
        200,
        {"name": "bob@ops", "role": "operator", "tenants": None, "via": "oidc"},
    )
    assert jwks[JWKS]["fetches"] == 2
    status, body = await _whoami(client, old_token)
    assert status == 401 and "kid" in body["error"]["message"]  # the withdrawn key no longer verifies anything
    clock.advance(31)
    status, _body = await _whoami(client, old_token)
    assert status == 401 and jwks[JWKS]["fetches"] == 3  # refetched (the interval passed), still not published


async def test_keys_older_than_max_age_are_refetched_and_a_failed_fetch_keeps_them(
    admin_app: AdminFactory, provider: tuple[list[SigningKey], web.Application, str], caplog: pytest.LogCaptureFixture
) -> None:
    published, jwks, url = provider
    clock = ManualClock(wall=time.time())
    client, _state = await admin_app(admin=_oidc(url), clock=clock)
    token = published[0].sign(claims(ISS, AUD, groups="gw-admins"))
    assert (await _whoami(client, token))[0] == 200
    clock.advance(599)
    assert (await _whoami(client, token))[0] == 200 and jwks[JWKS]["fetches"] == 1  # young enough
    clock.advance(2)
    jwks[JWKS]["fail"] = True
    with caplog.at_level(logging.WARNING, logger="tollgate.identity.jwks"):
        assert (await _whoami(client, token))[0] == 200  # the fetch failed: the cached keys still verify
    assert jwks[JWKS]["fetches"] == 2 and "could not be fetched" in caplog.text
    jwks[JWKS]["fail"] = False
    clock.advance(31)
    assert (await _whoami(client, token))[0] == 200 and jwks[JWKS]["fetches"] == 3  # stale: fetched again


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], body: dict[str, Any], sign: Callable[[bytes], bytes] | None = None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()) if sign else b'')}"


async def test_issuer_audience_algorithm_and_time_pins_refuse_the_token(
    admin_app: AdminFactory, provider: tuple[list[SigningKey], web.Application, str]
) -> None:
    published, _jwks, url = provider
    client, _state = await admin_app(admin=_oidc(url))
    k1 = published[0]
    good = claims(ISS, AUD, groups=["gw-admins"])
    assert (await _whoami(client, k1.sign(good)))[0] == 200
    pem = k1.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def hs256_with_the_public_key(data: bytes) -> bytes:
        return hmac.new(pem, data, hashlib.sha256).digest()

    now = int(time.time())
    refused = {
        "alg none": _forge({"alg": "none", "kid": "k1"}, good),
        "HS256 keyed with the public key": _forge({"alg": "HS256", "kid": "k1"}, good, hs256_with_the_public_key),
        "another issuer": k1.sign({**good, "iss": "https://evil.example.test/"}),
        "another audience": k1.sign({**good, "aud": "someone-else"}),
        "no audience": k1.sign({k: v for k, v in good.items() if k != "aud"}),
        "expired beyond the leeway": k1.sign({**good, "exp": now - 120}),
        "not valid before two minutes from now": k1.sign({**good, "nbf": now + 120}),
        "no exp": k1.sign({k: v for k, v in good.items() if k != "exp"}),
        "signed by a key the provider does not publish": SigningKey("k1").sign(good),
        "a bad signature": k1.sign(good)[:-4] + "AAAA",
    }
    for why, token in refused.items():
        status, body = await _whoami(client, token)
        assert status == 401, (why, body)
        assert body["error"]["code"] == "invalid_admin_token", why
    assert (await _whoami(client, k1.sign({**good, "exp": now - 10})))[0] == 200  # within the 30 s leeway


async def test_the_role_claim_maps_to_a_role_and_a_token_granting_none_is_403(
    admin_app: AdminFactory, provider: tuple[list[SigningKey], web.Application, str]
) -> None:
    published, _jwks, url = provider
    client, _state = await admin_app(admin={**_oidc(url), "principals": []})
    k1 = published[0]
    team = k1.sign(claims(ISS, AUD, groups=["acme-team", "unrelated"], tenants=["acme"], sub="carol@acme"))
    assert await _whoami(client, team) == (
        200,
        {"name": "carol@acme", "role": "tenant_admin", "tenants": ["acme"], "via": "oidc"},
    )
    async with client.get("/admin/tenants/globex", headers=bearer(team)) as r:
        assert r.status == 403
    async with client.get("/admin/tenants/acme", headers=bearer(team)) as r:
        assert r.status == 200
    both = k1.sign(claims(ISS, AUD, groups=["acme-team", "viewer", "gw-ops"]))
    assert (await _whoami(client, both))[1]["role"] == "operator"  # the strongest role granted wins
    for nothing in (claims(ISS, AUD, groups=["unrelated"]), claims(ISS, AUD), claims(ISS, AUD, groups=["acme-team"])):
        status, body = await _whoami(client, k1.sign(nothing))
        assert status == 403 and body["error"]["code"] == "no_admin_role", nothing
    async with client.get("/admin/whoami", headers=bearer(TOKENS["admin"])) as r:
        assert r.status == 200  # the listener's token stays beside the sign-on


async def test_an_oidc_principals_writes_are_audited_with_its_name(
    admin_app: AdminFactory, provider: tuple[list[SigningKey], web.Application, str]
) -> None:
    published, _jwks, url = provider
    client, state = await admin_app(admin=_oidc(url))
    token = published[0].sign(claims(ISS, AUD, groups=["gw-ops"], sub="dave@ops"))
    async with client.post("/admin/tenants/globex/suspend", headers=bearer(token)) as r:
        assert r.status == 200, await r.text()
    await state.accounting.audit.flush()
    async with client.get("/admin/tenants/globex/audit", headers=bearer(TOKENS["admin"])) as r:
        events = [e for e in (await r.json())["events"] if e["kind"] == "admin_change"]
    assert [(e["actor"], e["detail"]["role"], e["detail"]["via"]) for e in events] == [("dave@ops", "operator", "oidc")]
