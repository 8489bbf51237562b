"""Deleting a tenant on a Redis store reports (dry run), then removes, its limiter counters and usage totals."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from ..support.processes import gateway_process, mock_upstream_process
from ..support.redis import redis_server
from .admin_client import admin, admin_listener

pytestmark = pytest.mark.process


async def test_delete_dry_run_lists_the_tenants_counters_and_usage_and_the_delete_removes_them() -> None:
    with mock_upstream_process() as mock, redis_server() as redis:
        doc = {
            "listeners": admin_listener(),
            "upstreams": {"mock": {"base_url": f"{mock.url}/v1"}},
            "models": {"gpt-4o-mini": {"deployments": [{"upstream": "mock"}]}},
            "identity": {"chain": ["api_key"]},
            "store": {"backend": "redis", "url": redis.url},
            "usage": {"backend": "redis", "flush_interval": "100ms"},
            "registry": {"redis": redis.url},
        }
        with gateway_process(doc) as gw:
            async with aiohttp.ClientSession() as s:
                status, created = await admin(
                    gw, "POST", "/admin/tenants", {"id": "initech", "plan": "personal", "keys": [{}]}, session=s
                )
                assert status == 201
                key = created["created_keys"][0]["key"]
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
                async with s.post(
                    f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                ) as r:
                    assert r.status == 200
                await asyncio.sleep(0.5)  # usage flushed, lease released
                status, report = await admin(gw, "DELETE", "/admin/tenants/initech?dry_run=true", session=s)
                assert status == 200 and report["dry_run"] is True
                assert report["store"]["counters"], report  # the plan's monthly quota counter, at least
                assert all("initech" in k for k in report["store"]["counters"])
                assert report["store"]["usage"] and all("{initech}" in k for k in report["store"]["usage"])
                status, done = await admin(gw, "DELETE", "/admin/tenants/initech", session=s)
                assert status == 200 and done["dry_run"] is False
                status, _again = await admin(gw, "DELETE", "/admin/tenants/initech?dry_run=true", session=s)
                assert status == 404
        left = redis.client().keys("*initech*")
        assert not [k for k in left if not k.startswith(b"tollgate:registry")], left
