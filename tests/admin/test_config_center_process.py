"""The config-center API against live gateway processes: the design's curl examples set up a namespace, a matcher and
each rule type, after which matching traffic is limited and other traffic is not; disabling the namespace or its
matcher lifts it; two gateways on one PostgreSQL see each other's changes within a second."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from ..identity.admin_client import admin, admin_listener, admin_url
from ..identity.conftest import ACME_KEY, ADMIN_TOKEN, identity_doc
from ..support.processes import Proc, gateway_process

pytestmark = [pytest.mark.process, pytest.mark.filterwarnings("ignore::ResourceWarning")]

# The design's own examples, as an operator would paste them into a shell.
CURL_SCRIPT = r"""
set -euo pipefail
api() { curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' "$@"; }
id_of() { python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'; }

NS=$(api -X POST "$ADMIN/api/v1/namespaces" \
  -d '{"namespace_code": "wechat", "namespace_name": "WeChat", "description": "wechat mini program", "status": 1}' | id_of)
api -X POST "$ADMIN/api/v1/namespaces/$NS/matchers" \
  -d '{"matcher_name": "wechat channel", "matcher_type": "header", "match_field": "channelcode",
       "match_operator": "equals", "match_value": "wechat", "priority": 100, "status": 1}' >/dev/null
RPM=$(api -X POST "$ADMIN/api/v1/namespaces/$NS/rules" \
  -d '{"rule_name": "wechat requests", "rule_type": "request_limit",
       "rule_config": {"max_requests_per_minute": 5, "max_requests_per_hour": 1000}, "priority": 10, "status": 1}' | id_of)
api -X POST "$ADMIN/api/v1/namespaces/$NS/rules" \
  -d '{"rule_name": "wechat tokens", "rule_type": "token_limit",
       "rule_config": {"max_tokens_per_hour": 100000, "max_tokens_per_day": 1000000, "window_size": 3600},
       "priority": 10, "status": 1}' >/dev/null
api -X POST "$ADMIN/api/v1/namespaces/$NS/rules" \
  -d '{"rule_name": "wechat max_tokens", "rule_type": "field_check",
       "rule_config": "{\"field_path\": \"body.max_tokens\", \"operator\": \"lte\", \"value\": 1000, \"message\": \"max_tokens must be at most 1000\"}",
       "priority": 20, "status": 1}' >/dev/null
api -X POST "$ADMIN/api/v1/namespaces/$NS/rules" \
  -d '{"rule_name": "wechat connections", "rule_type": "connection_limit",
       "rule_config": {"max_connections": 2, "window_size": 60}, "priority": 10, "status": 1}' >/dev/null
api "$ADMIN/api/v1/counters/$RPM:wechat" >/dev/null
api -X POST "$ADMIN/api/v1/counters/$RPM:wechat/increment" -d '{"amount": 1}' >/dev/null
echo "$NS $RPM"
"""

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


async def _chat(proc: Proc, s: aiohttp.ClientSession, channel: str | None, **body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ACME_KEY}"}
    if channel is not None:
        headers["channelcode"] = channel
    async with s.post(f"{proc.url}/v1/chat/completions", json={**CHAT, **body}, headers=headers) as r:
        return r.status, await r.json()


async def _within(probe: Callable[[], Awaitable[bool]], seconds: float) -> float:
    started = time.perf_counter()
    while not await probe():
        elapsed = time.perf_counter() - started
        assert elapsed < seconds, f"not seen after {elapsed:.3f}s"
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def test_the_designs_curl_examples_set_up_limits_that_hold_on_matching_traffic_only(
    mock_server: Callable[..., Awaitable[str]],
) -> None:
    upstream = await mock_server(latency_ms=800)
    doc = identity_doc(f"{upstream}/v1", listeners=admin_listener())
    with gateway_process(doc) as gw:
        env = {**os.environ, "ADMIN": admin_url(gw), "TOKEN": ADMIN_TOKEN}
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-c", CURL_SCRIPT], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr + done.stdout
        ns, rpm = map(int, done.stdout.split())
        async with aiohttp.ClientSession() as s:
            status, counter = await admin(gw, "GET", f"/api/v1/counters/{rpm}:wechat", session=s)
            assert status == 200 and [c["used"] for c in counter["counters"]] == [1, 1], counter  # the increment
            # field_check: 400 in the route's dialect, with the rule's message, before any limit is consumed
            status, answer = await _chat(gw, s, "wechat", max_tokens=5000)
            assert status == 400 and answer["error"]["message"] == "max_tokens must be at most 1000", answer
            # connection_limit: of three at once, two are served and one refused
            statuses = sorted(st for st, _ in await asyncio.gather(*(_chat(gw, s, "wechat") for _ in range(3))))
            assert statuses == [200, 200, 429], statuses
            # request_limit 5 a minute: 1 (incremented) + 2 served above, 2 more, then 429
            assert [(await _chat(gw, s, "wechat"))[0] for _ in range(3)] == [200, 200, 429]
            # other traffic is not the namespace's
            assert [(await _chat(gw, s, "alipay"))[0] for _ in range(3)] == [200, 200, 200]
            assert (await _chat(gw, s, None))[0] == 200
            # a disabled namespace matches nothing: its exhausted limit no longer applies
            status, _ = await admin(gw, "PUT", f"/api/v1/namespaces/{ns}", {"status": 0}, session=s)
            assert status == 200
            assert (await _chat(gw, s, "wechat"))[0] == 200
            # enabled again, with its only matcher disabled: still nothing matches
            await admin(gw, "PUT", f"/api/v1/namespaces/{ns}", {"status": 1}, session=s)
            assert (await _chat(gw, s, "wechat"))[0] == 429
            status, matchers = await admin(gw, "GET", f"/api/v1/namespaces/{ns}/matchers", session=s)
            await admin(gw, "PUT", f"/api/v1/matchers/{matchers['data'][0]['id']}", {"status": 0}, session=s)
            assert (await _chat(gw, s, "wechat"))[0] == 200
            # the reset counter lets matching traffic through again
            await admin(gw, "PUT", f"/api/v1/matchers/{matchers['data'][0]['id']}", {"status": 1}, session=s)
            status, reset = await admin(gw, "POST", f"/api/v1/counters/{rpm}:wechat/reset", session=s)
            assert status == 200 and [c["used"] for c in reset["counters"]] == [0, 0], reset
            assert (await _chat(gw, s, "wechat"))[0] == 200


async def test_two_gateways_on_one_postgres_see_config_center_changes_within_a_second_with_the_same_ids(
    mock_server: Callable[..., Awaitable[str]], postgres_url: str
) -> None:
    upstream = await mock_server()
    doc = identity_doc(f"{upstream}/v1", listeners=admin_listener(), database={"url": postgres_url})
    with gateway_process(doc) as a, gateway_process(doc) as b:
        async with aiohttp.ClientSession() as s:
            status, ns = await admin(a, "POST", "/api/v1/namespaces", {"namespace_code": "wechat"}, session=s)
            assert status == 201, ns
            matcher = {
                "matcher_type": "header",
                "match_field": "channelcode",
                "match_operator": "equals",
                "match_value": "wechat",
            }
            await admin(a, "POST", f"/api/v1/namespaces/{ns['id']}/matchers", matcher, session=s)
            rule_body = {"rule_type": "request_limit", "rule_config": {"max_requests_per_minute": 1}}
            status, rule = await admin(a, "POST", f"/api/v1/namespaces/{ns['id']}/rules", rule_body, session=s)
            assert status == 201, rule

            async def b_has_it() -> bool:
                status, seen = await admin(b, "GET", f"/api/v1/rules/{rule['id']}", session=s)
                return status == 200 and seen["rule_config"] == rule_body["rule_config"]

            await _within(b_has_it, 1.0)
            assert [(await _chat(b, s, "wechat"))[0] for _ in range(2)] == [200, 429], "B enforces A's rule"
            status, listed = await admin(b, "GET", "/api/v1/namespaces", session=s)
            assert [n["id"] for n in listed["data"] if n["namespace_code"] == "wechat"] == [ns["id"]]
            # a change through B reaches A
            await admin(b, "PUT", f"/api/v1/rules/{rule['id']}", {"status": 0}, session=s)

            async def a_sees_it() -> bool:
                return (await admin(a, "GET", f"/api/v1/rules/{rule['id']}", session=s))[1].get("status") == 0

            await _within(a_sees_it, 1.0)
            # ids allocated on both at once never collide
            made = await asyncio.gather(
                admin(a, "POST", "/api/v1/namespaces", {"namespace_code": "one"}, session=s),
                admin(b, "POST", "/api/v1/namespaces", {"namespace_code": "two"}, session=s),
            )
            assert [st for st, _ in made] == [201, 201]
            assert made[0][1]["id"] != made[1][1]["id"]
            # sync and stats answer at the design's paths, from the database routes
            status, synced = await admin(b, "POST", "/api/v1/sync", session=s)
            assert status == 200 and synced["registry_records"] > 0, synced
            status, stats = await admin(b, "GET", "/api/v1/stats", session=s)
            assert status == 200 and stats["database"]["reachable"], stats
            status, health = await admin(a, "GET", "/api/v1/health", session=s)
            assert health == {
                "status": "healthy",
                "storage": {"redis": "embedded", "database": "healthy", "registry": "healthy"},
            }
