"""A gateway on PostgreSQL while PostgreSQL is stopped: requests flow, admin writes answer 503 naming the database,
/readyz names it (degraded, still serving), and once it is back the usage aggregates add up to every request; /readyz names a Redis that
stopped too."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from ..support.postgres import PostgresServer
from ..support.processes import Proc
from ..support.redis import RedisServer
from .conftest import ACME_KEY, ADMIN_TOKEN, Admin, accounting_doc, gateway, post_chat, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _readyz(proc: Proc) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{proc.url}/readyz") as r:
        return r.status, await r.json()


async def test_with_postgresql_stopped_requests_flow_admin_writes_answer_503_and_no_usage_is_lost(
    mock: Proc, pg_server: PostgresServer, postgres_url: str
) -> None:
    doc = accounting_doc(f"{mock.url}/v1", database={"url": postgres_url, "timeout": "1s"})
    with gateway(doc) as proc:
        admin = Admin(proc)
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                assert (await post_chat(session, proc, ACME_KEY))[0] == 200
            pg_server.stop()
            try:
                statuses = [(await post_chat(session, proc, ACME_KEY))[0] for _ in range(5)]
                assert statuses == [200] * 5
                await asyncio.sleep(1.0)  # at least one flush fails while it is down
                url = f"http://127.0.0.1:{proc.extra_ports['admin']}/admin/tenants"
                async with session.post(url, json={"id": "initech", "plan": "personal"}, headers=AUTH) as r:
                    assert r.status == 503, await r.text()
                    message = (await r.json())["error"]["message"]
                assert "postgresql://" in message, message
                status, body = await _readyz(proc)
                assert (status, body["status"]) == (200, "degraded")  # it still serves: not taken out of rotation
                assert any(p.startswith("the database postgresql://") for p in body["degraded"]), body
            finally:
                pg_server.start()

        async def all_counted() -> bool:
            return bool((await admin.get("/admin/tenants/acme/usage"))["requests"] >= 8)

        assert await wait_until(all_counted, timeout=20)
        await asyncio.sleep(0.5)  # a delta applied twice would show now
        assert (await admin.get("/admin/tenants/acme/usage"))["requests"] == 8
        assert (await _readyz(proc))[0] == 200


async def test_readyz_names_the_limiter_store_when_redis_stops(mock: Proc, own_redis: RedisServer) -> None:
    doc = accounting_doc(f"{mock.url}/v1", store={"backend": "redis", "url": own_redis.url})
    with gateway(doc) as proc:
        assert (await _readyz(proc))[0] == 200
        own_redis.stop()
        status, body = await _readyz(proc)
        assert (status, body["status"]) == (200, "degraded")
        assert any(p.startswith("the limiter store 'default' is down") for p in body["degraded"]), body
