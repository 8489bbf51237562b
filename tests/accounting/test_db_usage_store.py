"""Usage aggregates, alert claims and the audit log in the database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tollgate.accounting.aggregates import Batch, day_of, month_of
from tollgate.accounting.audit import AuditLog
from tollgate.accounting.db_audit import DatabaseAuditStore
from tollgate.accounting.db_usage_store import DatabaseUsageStore
from tollgate.accounting.usage_store import MemoryUsageStore
from tollgate.config.accounting import AuditConfig
from tollgate.database import Database, migrate, open_database

DAY = 86400.0
WALL = time.time()
MONTH = month_of(WALL)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.open()
    await migrate(database)
    try:
        yield database
    finally:
        await database.close()


def _requests(tenant: str, n: int, *, model: str = "gpt-4o", errors: int = 0) -> Batch:
    batch = Batch()
    for i in range(n):
        batch.add_counts(tenant, WALL, model, 1, 1 if i < errors else 0, 100, 20, 7, estimated=False)
    return batch


async def test_a_batch_adds_to_the_counters_and_answers_the_new_monthly_totals_of_its_tenants(db: Database) -> None:
    store = DatabaseUsageStore(db)
    first = _requests("acme", 3, errors=1)
    first.merge(_requests("globex", 1))
    totals = await store.apply(first)
    assert totals == {
        ("acme", MONTH): {"requests": 3, "prompt_tokens": 300, "completion_tokens": 60, "cost_n": 21},
        ("globex", MONTH): {"requests": 1, "prompt_tokens": 100, "completion_tokens": 20, "cost_n": 7},
    }
    totals = await store.apply(_requests("acme", 2))
    assert totals == {("acme", MONTH): {"requests": 5, "prompt_tokens": 500, "completion_tokens": 100, "cost_n": 35}}
    month, days = await store.read("acme", MONTH)
    assert month["requests"] == 5 and month["errors"] == 1 and month["m:gpt-4o:cost_n"] == 35
    assert days == {day_of(WALL): month}  # one day so far: its fields are the month's
    assert await store.tenants(MONTH) == ["acme", "globex"]
    assert await store.read("nobody", MONTH) == ({}, {})


async def test_the_database_store_reads_what_the_memory_store_reads_for_the_same_batches(db: Database) -> None:
    stored, memory = DatabaseUsageStore(db), MemoryUsageStore(40 * DAY, 400 * DAY)
    for batch_of in (lambda: _requests("acme", 2, model="a"), lambda: _requests("acme", 1, model="b", errors=1)):
        assert await stored.apply(batch_of()) == await memory.apply(batch_of())
    assert await stored.read("acme", MONTH) == await memory.read("acme", MONTH)


async def test_a_claim_succeeds_once_and_fired_lists_it(db: Database) -> None:
    store = DatabaseUsageStore(db)
    claims = [("acme", MONTH, "monthly_requests:80"), ("acme", MONTH, "monthly_requests:100")]
    assert await store.claim(claims) == [True, True]
    assert await store.claim([claims[0], ("acme", MONTH, "monthly_spend:80")]) == [False, True]
    assert await store.fired("acme", MONTH) == ["monthly_requests:100", "monthly_requests:80", "monthly_spend:80"]
    assert await store.fired("globex", MONTH) == []


async def test_of_many_claims_at_once_through_two_databases_each_alert_is_won_exactly_once(
    database_url: str, db: Database
) -> None:
    other = open_database(database_url)  # a second connection (pool, or SQLite file handle), as another process has
    await other.open()
    try:
        stores = [DatabaseUsageStore(db), DatabaseUsageStore(other)]
        names = [f"alert-{i}" for i in range(10)]
        attempts = [stores[i % 2].claim([("acme", MONTH, n) for n in names]) for i in range(20)]
        results = await asyncio.gather(*attempts)
    finally:
        await other.close()
    wins = [sum(result[i] for result in results) for i in range(len(names))]
    assert wins == [1] * len(names)


async def test_concurrent_batches_through_two_databases_lose_no_delta(database_url: str, db: Database) -> None:
    other = open_database(database_url)
    await other.open()
    try:
        stores = [DatabaseUsageStore(db), DatabaseUsageStore(other)]
        await asyncio.gather(*(stores[i % 2].apply(_requests("acme", 1)) for i in range(30)))
    finally:
        await other.close()
    month, _days = await DatabaseUsageStore(db).read("acme", MONTH)
    assert month["requests"] == 30 and month["cost_n"] == 30 * 7


async def test_the_audit_log_reads_back_newest_first_filtered_by_tenant_and_time(db: Database) -> None:
    now = [1_700_000_000.0]
    audit = AuditLog(AuditConfig(), database=DatabaseAuditStore(db), clock=lambda: now[0])
    for tenant, kind in (("acme", "tenant_created"), ("globex", "key_revoked"), ("acme", "tenant_updated")):
        audit.record(kind, actor="ops", tenant=tenant, target="key:k1" if kind == "key_revoked" else None)
        now[0] += 10
    await audit.flush()
    assert audit.pending == 0
    assert [e["kind"] for e in await audit.list()] == ["tenant_updated", "key_revoked", "tenant_created"]
    assert [e["kind"] for e in await audit.list(tenant="acme")] == ["tenant_updated", "tenant_created"]
    picked = await audit.list(since=1_700_000_010.0, until=1_700_000_010.0)
    assert [(e["kind"], e["target"], e["ts"]) for e in picked] == [("key_revoked", "key:k1", 1_700_000_010.0)]
    assert len(await audit.list(limit=1)) == 1
    assert await db.fetchval("SELECT key_id FROM audit_log WHERE event = $1", "key_revoked") == "k1"
