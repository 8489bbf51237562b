"""The admin API lists dead letters (metadata, never bodies) and the live resilience state."""

from __future__ import annotations

import aiohttp
import pytest

from ..support.processes import gateway_config, gateway_process, refusing_port

pytestmark = pytest.mark.process

TOKEN = "admin-token-for-resilience-routes"


async def test_a_request_that_failed_everywhere_is_listed_as_a_dead_letter_without_its_body() -> None:
    dead = f"http://127.0.0.1:{refusing_port()}/v1"  # nothing listens there
    config = gateway_config(dead, listeners={"admin": {"enabled": True, "token": TOKEN}})
    secret = "a prompt that must never be stored"
    with gateway_process(config) as gw:
        admin = f"http://127.0.0.1:{gw.extra_ports['admin']}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as s:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secret}]}
            async with s.post(f"{gw.url}/v1/chat/completions", json=body, headers={"x-request-id": "doomed-1"}) as r:
                assert r.status == 502
            async with s.get(f"{admin}/admin/dead-letters", headers=auth) as r:
                assert r.status == 200
                text = await r.text()
                letters = (await r.json())["data"]
            async with s.get(f"{admin}/admin/resilience", headers=auth) as r:
                assert r.status == 200
                snapshot = await r.json()
            async with s.get(f"{admin}/admin/dead-letters?limit=zero", headers=auth) as r:
                assert r.status == 400
            async with s.get(f"{admin}/admin/dead-letters") as r:
                assert r.status == 401
    assert [d["request_id"] for d in letters] == ["doomed-1"]
    assert secret not in text
    assert snapshot["failed"] >= 1 and snapshot["attempts"] >= 1
