"""``POST /admin/sync`` and ``GET /admin/stats`` of a gateway on a database, and ``tollgate db import`` from a file
and a Redis registry and usage store, run twice: on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tollgate.accounting.aggregates import Batch, month_of
from tollgate.accounting.db_usage_store import DatabaseUsageStore
from tollgate.accounting.usage_store import FileUsageStore, RedisUsageStore
from tollgate.admin import Probes, make_admin_app
from tollgate.config import load_config
from tollgate.database import Database, open_database
from tollgate.process.cli import main
from tollgate.process.public import healthz, readyz
from tollgate.process.server import reload_here
from tollgate.registry.stores import DatabaseStore, FileStore, RedisStore
from tollgate.runtime.state import GatewayState

from ..identity.conftest import ADMIN_TOKEN, identity_doc
from ..support.redis import RedisServer

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
WALL = time.time()
MONTH = month_of(WALL)
TENANT = {"id": "initech", "plan": "personal", "status": "active"}


@pytest.fixture
async def admin(
    tmp_path: Path, database_url: str, aiohttp_client: MakeClient
) -> AsyncIterator[tuple[Client, GatewayState]]:
    doc = identity_doc(
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        database={"url": database_url},
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    state = GatewayState(load_config(path), config_path=str(path))
    await state.start()
    await state.registry.open()  # opened, not followed: only /admin/sync takes in what others write
    try:
        app = make_admin_app(state, probes=Probes(healthz, readyz), reload=reload_here)
        yield await aiohttp_client(app), state
    finally:
        await state.registry.close()
        await state.close()


async def test_sync_loads_a_record_written_behind_the_process_back_and_stats_show_the_lag_before(
    admin: tuple[Client, GatewayState],
) -> None:
    client, state = admin
    assert state.database is not None
    await DatabaseStore(state.database).write({"t:initech": TENANT})  # as another process would
    async with client.get("/admin/stats", headers=AUTH) as r:
        assert r.status == 200
        stats: dict[str, Any] = await r.json()
    assert stats["registry"]["lag"] == stats["registry"]["database_version"] - stats["registry"]["version"] >= 1
    assert stats["database"]["reachable"] is True and stats["database"]["schema_version"] >= 1
    assert stats["database"]["description"] == state.database.description  # the URL, its password masked
    assert set(stats["database"]["tables"]) >= {"registry_records", "usage_counters", "audit_log", "spend_log"}
    assert stats["buffers"]["usage_carry"] == 0 and stats["buffers"]["spend_log"] == 0
    assert stats["usage_store"].startswith("database ") and stats["audit_store"].startswith("database ")
    async with client.post("/admin/sync", headers=AUTH) as r:
        assert r.status == 200
        synced: dict[str, Any] = await r.json()
    assert synced["registry_version"] == stats["registry"]["database_version"]
    assert synced["registry_records"] >= 1 and synced["duration_ms"] >= 0 and synced["redis_rewritten"] == []
    assert "initech" in state.registry.directory.tenants
    async with client.get("/admin/stats", headers=AUTH) as r:
        after: dict[str, Any] = await r.json()
    assert after["registry"]["lag"] == 0
    assert after["registry"]["last_sync"] >= stats["registry"]["last_sync"]
    if after["database"]["rows_exact"]:
        assert after["database"]["tables"]["registry_records"] == 1


def _usage_batch() -> Batch:
    batch = Batch()
    for _ in range(3):
        batch.add_counts("acme", WALL, "gpt-4o", 1, 0, 100, 20, 7, estimated=False)
    batch.add_user("acme", WALL, "bob", (3, 0, 300, 60, 21))
    return batch


async def _import_twice(tmp_path: Path, database_url: str, *flags: str) -> Database:
    config = tmp_path / "import.yaml"
    config.write_text(yaml.safe_dump(identity_doc(database={"url": database_url})))
    for _ in range(2):
        argv = ["db", "import", "--config", str(config), *flags]
        assert await asyncio.to_thread(main, argv) == 0  # the command runs its own event loop
    db = open_database(database_url)
    await db.open()
    return db


async def _check_imported(db: Database) -> None:
    try:
        records = (await DatabaseStore(db).load()).records
        assert records == {"t:initech": TENANT, "ns:batch": {"priority": 1}}
        assert (
            await db.fetchval("SELECT version FROM registry_version WHERE id = 1") == 1
        )  # the second run wrote nothing
        store = DatabaseUsageStore(db)
        month, days = await store.read("acme", MONTH)
        assert month["requests"] == 3 and month["cost_n"] == 21 and len(days) == 1
        assert await store.users("acme", MONTH) == {
            "bob": {"requests": 3, "errors": 0, "prompt_tokens": 300, "completion_tokens": 60, "cost_n": 21}
        }
        assert await store.tenants(MONTH) == ["acme"]
        assert await store.fired("acme", MONTH) == ["monthly_requests:80"]
    finally:
        await db.close()


async def test_import_from_a_registry_file_and_a_usage_file_twice_gives_the_same_database(
    tmp_path: Path, database_url: str
) -> None:
    registry = FileStore(tmp_path / "registry.json")
    await registry.write({"t:initech": TENANT, "ns:batch": {"priority": 1}})
    await registry.write({"t:gone": TENANT})
    await registry.write({"t:gone": None})
    usage = FileUsageStore(tmp_path / "usage.json", 40 * 86400, 400 * 86400)
    await usage.apply(_usage_batch())
    await usage.claim([("acme", MONTH, "monthly_requests:80")])
    flags = ("--from-registry", str(registry.path), "--from-usage", str(usage.path))
    await _check_imported(await _import_twice(tmp_path, database_url, *flags))
    assert orjson.loads(registry.path.read_bytes())["version"] == 3  # the source is only read


async def test_import_from_a_redis_registry_and_redis_usage_twice_gives_the_same_database(
    tmp_path: Path, database_url: str, redis: RedisServer
) -> None:
    client = Redis.from_url(redis.url)
    try:
        await client.flushall()
        registry = RedisStore(redis.url, "tollgate:registry")  # the default registry.prefix
        await registry.write({"t:initech": TENANT, "ns:batch": {"priority": 1}})
        await registry.close()
        usage = RedisUsageStore(client, "tg:usage", 40 * 86400, 400 * 86400)  # the default usage.key_prefix
        await usage.apply(_usage_batch())
        await usage.claim([("acme", MONTH, "monthly_requests:80")])
    finally:
        await client.aclose()
    db = await _import_twice(tmp_path, database_url, "--from-registry", redis.url, "--from-usage", redis.url)
    await _check_imported(db)
