"""Tenant JWT identity with keys from a JWKS URL: fetched on first use, rotated without a restart, pins kept."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollgate.errors import Unauthenticated
from tollgate.identity import SigningKeysStale, authenticate, authenticate_fresh

from ..support.jwks_server import JWKS, SigningKey, claims, jwks_app
from .conftest import identity_doc
from .helpers import Identified, mocked_request

ISS, AUD = "https://idp.example.test/", "tollgate"
MakeServer = Callable[[web.Application], Awaitable[TestServer]]


class Wall:
    """Wall time that a test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _identified(url: str, clock: Wall, **jwt: Any) -> Identified:
    doc = identity_doc(
        identity={
            "chain": ["api_key", "jwt"],
            "jwt": {"jwks_url": url, "algorithms": ["RS256"], "issuer": ISS, "audience": AUD, **jwt},
        }
    )
    return Identified(doc, clock=clock)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tenant_tokens_verify_with_keys_from_the_url_and_a_rotation_needs_no_restart(
    aiohttp_server: MakeServer,
) -> None:
    published = [SigningKey("t1")]
    app = jwks_app(published)
    url = str((await aiohttp_server(app)).make_url("/jwks.json"))
    clock = Wall()
    ident = _identified(url, clock)
    old = published[0].sign(claims(ISS, AUD, tenant="acme", sub="alice"))
    with pytest.raises(SigningKeysStale):  # nothing fetched yet: a caller that cannot wait answers 401
        authenticate(mocked_request(_bearer(old)), ident.identity, ident.directory)
    principal = await authenticate_fresh(mocked_request(_bearer(old)), ident.identity, ident.directory)
    assert (principal.tenant, principal.user, principal.via) == ("acme", "alice", "jwt")
    assert app[JWKS]["fetches"] == 1

    withdrawn = published[0]
    published[:] = [SigningKey("t2")]
    new = published[0].sign(claims(ISS, AUD, tenant="globex", sub="bob"))
    with pytest.raises(Unauthenticated):  # an unknown kid within the refetch interval: no fetch
        await authenticate_fresh(mocked_request(_bearer(new)), ident.identity, ident.directory)
    assert app[JWKS]["fetches"] == 1
    clock.offset += 31
    principal = await authenticate_fresh(mocked_request(_bearer(new)), ident.identity, ident.directory)
    assert (principal.tenant, principal.user) == ("globex", "bob") and app[JWKS]["fetches"] == 2
    fresh_old = withdrawn.sign(claims(ISS, AUD, tenant="acme"))  # a new token signed with the withdrawn key
    with pytest.raises(Unauthenticated, match="kid"):
        await authenticate_fresh(mocked_request(_bearer(fresh_old)), ident.identity, ident.directory)


async def test_tenant_tokens_from_the_url_keep_the_issuer_audience_and_algorithm_pins(
    aiohttp_server: MakeServer,
) -> None:
    published = [SigningKey("t1")]
    url = str((await aiohttp_server(jwks_app(published))).make_url("/jwks.json"))
    ident = _identified(url, Wall())
    key = published[0]
    good = claims(ISS, AUD, tenant="acme")
    assert (await authenticate_fresh(mocked_request(_bearer(key.sign(good))), ident.identity, ident.directory)).tenant
    for bad in (
        {**good, "iss": "https://evil.test/"},
        {**good, "aud": "other"},
        {**good, "exp": int(time.time()) - 600},
    ):
        with pytest.raises(Unauthenticated):
            await authenticate_fresh(mocked_request(_bearer(key.sign(bad))), ident.identity, ident.directory)
    rs384 = key.sign(good, alg="RS384")  # an algorithm the config does not allow
    with pytest.raises(Unauthenticated, match="algorithm"):
        await authenticate_fresh(mocked_request(_bearer(rs384)), ident.identity, ident.directory)


def test_jwks_url_needs_https_off_loopback_and_asymmetric_algorithms() -> None:
    from tollgate.config import ConfigError, config_from_dict

    def problems(**jwt: Any) -> list[str]:
        doc = identity_doc(identity={"chain": ["jwt"], "jwt": jwt})
        with pytest.raises(ConfigError) as exc:
            config_from_dict(doc, env={})
        return exc.value.problems

    assert any(
        "identity.jwt.jwks_url" in p and "https" in p
        for p in problems(jwks_url="http://idp.example.test/jwks", algorithms=["RS256"])
    )
    assert any(
        "identity.jwt.algorithms" in p for p in problems(jwks_url="https://idp.example.test/jwks", algorithms=["HS256"])
    )
    assert any("identity.jwt.algorithms" in p and "required" in p for p in problems(jwks_url="https://idp.test/jwks"))


async def test_a_token_verified_before_its_key_was_withdrawn_is_not_served_from_the_cache_after(
    aiohttp_server: MakeServer,
) -> None:
    published = [SigningKey("t1")]
    url = str((await aiohttp_server(jwks_app(published))).make_url("/jwks.json"))
    clock = Wall()
    ident = _identified(url, clock)
    token = published[0].sign(claims(ISS, AUD, tenant="acme", exp=int(time.time()) + 3600))
    assert (await authenticate_fresh(mocked_request(_bearer(token)), ident.identity, ident.directory)).tenant == "acme"
    assert authenticate(mocked_request(_bearer(token)), ident.identity, ident.directory).tenant == "acme"  # cached
    published[:] = [SigningKey("t2")]
    clock.offset += 601  # past the max age: fetched again, t1 is gone
    with pytest.raises(Unauthenticated, match="kid"):
        await authenticate_fresh(mocked_request(_bearer(token)), ident.identity, ident.directory)
