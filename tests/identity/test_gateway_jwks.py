"""A gateway process whose tenant JWTs are checked against a JWKS URL: the first token is served without a prior
fetch, and a key the provider rotates in is served without a restart while the withdrawn one is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ..support.jwks_server import JWKS, SigningKey, claims, jwks_app
from ..support.processes import Proc, gateway_process
from .conftest import identity_doc

pytestmark = [pytest.mark.process, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ISS, AUD = "https://idp.example.test/", "tollgate"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MakeServer = Callable[[web.Application], Awaitable[TestServer]]


async def _chat(gateway: Proc, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers) as r,
    ):
        return r.status


async def test_tenant_jwts_from_a_jwks_url_are_served_and_a_rotation_needs_no_restart(
    mock: Proc, aiohttp_server: MakeServer
) -> None:
    published = [SigningKey("g1")]
    app = jwks_app(published)
    url = str((await aiohttp_server(app)).make_url("/jwks.json"))
    jwt_section = {
        "jwks_url": url,
        "algorithms": ["RS256"],
        "issuer": ISS,
        "audience": AUD,
        "jwks_refetch_interval": "1s",
    }
    doc = identity_doc(f"{mock.url}/v1", identity={"chain": ["api_key", "jwt"], "jwt": jwt_section})
    with gateway_process(doc) as gateway:
        old = published[0]
        assert await _chat(gateway, old.sign(claims(ISS, AUD, tenant="acme"))) == 200  # fetched on first use
        assert app[JWKS]["fetches"] == 1
        published[:] = [SigningKey("g2")]
        await asyncio.sleep(1.2)  # past the refetch interval
        assert await _chat(gateway, published[0].sign(claims(ISS, AUD, tenant="globex"))) == 200
        assert app[JWKS]["fetches"] == 2
        assert await _chat(gateway, old.sign(claims(ISS, AUD, tenant="acme"))) == 401
