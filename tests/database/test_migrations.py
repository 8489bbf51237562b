"""Migrations: from empty to latest on both engines, idempotent, once under two concurrent migrators, refused when newer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tollgate.database import Database, known_migrations, migrate, open_database, schema_status
from tollgate.errors import DatabaseError

TABLES = {
    "schema_migrations",
    "registry_records",
    "registry_version",
    "spend_log",
    "usage_counters",
    "audit_log",
    "scaling_history",
}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def _tables(db: Database) -> set[str]:
    if db.dialect == "postgresql":
        rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    else:
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {r[0] for r in rows}


async def test_status_of_an_empty_database_lists_every_migration_as_pending(db: Database) -> None:
    status = await schema_status(db)
    assert status.current == 0
    assert status.latest == known_migrations()[-1].version
    assert status.pending == [m.name for m in known_migrations()]
    assert await _tables(db) == set()  # asking does not create anything


async def test_migrate_from_empty_creates_every_table_then_status_is_current(db: Database) -> None:
    applied = await migrate(db)
    assert applied == [m.version for m in known_migrations()]
    assert await _tables(db) == TABLES
    status = await schema_status(db)
    assert (status.current, status.pending) == (status.latest, [])
    assert await db.fetchrow("SELECT id, version FROM registry_version") == (1, 0)


async def test_migrate_twice_applies_nothing_the_second_time(db: Database) -> None:
    await migrate(db)
    assert await migrate(db) == []
    assert await db.fetchval("SELECT COUNT(*) FROM schema_migrations") == len(known_migrations())
    assert await db.fetchval("SELECT COUNT(*) FROM registry_version") == 1


async def test_autoincrement_ids_and_spend_rows_fit_the_schema(db: Database) -> None:
    await migrate(db)
    for event in ("tenant.created", "key.revoked"):
        await db.execute(
            "INSERT INTO audit_log (ts_ms, event, tenant, doc) VALUES ($1, $2, $3, $4)", 1, event, "acme", "{}"
        )
    assert await db.fetch("SELECT id, event FROM audit_log ORDER BY id") == [(1, "tenant.created"), (2, "key.revoked")]
    row = (
        "req-1",
        1_700_000_000_000,
        "acme",
        "k1",
        None,
        "default",
        "/v1/chat/completions",
        "gpt-4o-mini",
        "gpt-4o-mini-2024",
        "openai",
        "mock",
        "gpt-4o-mini",
        10,
        20,
        0,
        0,
        0,
        1,
        1234,
        "USD",
        200,
        None,
        12.5,
        3.25,
        1,
        0,
        1,
        0,
    )
    placeholders = ", ".join(f"${i}" for i in range(1, len(row) + 1))
    await db.execute(f"INSERT INTO spend_log VALUES ({placeholders})", *row)
    assert await db.fetchrow("SELECT * FROM spend_log") == row


async def test_a_database_newer_than_the_code_is_refused_naming_both_versions(db: Database) -> None:
    await migrate(db)
    latest = known_migrations()[-1].version
    await db.execute(
        "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)", 999, "9999_future", 0
    )
    with pytest.raises(DatabaseError, match=rf"schema version 999, newer than this gateway knows \({latest}\)"):
        await migrate(db)
    assert (await schema_status(db)).too_new


async def test_two_migrators_on_one_database_apply_each_migration_once(database_url: str) -> None:
    first, second = open_database(database_url), open_database(database_url)
    await first.open()
    await second.open()
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
        everything = [m.version for m in known_migrations()]
        # Each migration is applied by exactly one of them (which one may alternate, migration by migration).
        assert sorted(results[0] + results[1]) == everything
        assert await first.fetchval("SELECT COUNT(*) FROM schema_migrations") == len(everything)
    finally:
        await first.close()
        await second.close()
