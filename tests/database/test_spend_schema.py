"""The spend log's shape since 0002 (clustered by time): a database at 0001 keeps its rows through the migration, a
replayed batch never duplicates, the bulk insert of both engines, and every spend query reads through an index."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from tollgate.database import Database, migrate, open_database
from tollgate.database import migrations as migrations_module
from tollgate.database.spend import (
    SPEND_COLUMNS,
    SpendFilter,
    delete_spend_before,
    insert_spend,
    select_bill,
    select_spend,
)
from tollgate.errors import DatabaseError

from ..admin.test_spend_routes import T0, row

OLD_INSERT = (  # how the writer inserted rows while the schema was at 0001
    f"INSERT INTO spend_log ({', '.join(SPEND_COLUMNS[:27])}) VALUES ({', '.join(f'${i + 1}' for i in range(27))}) "
    "ON CONFLICT (request_id) DO NOTHING"
)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def _migrate_to(db: Database, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    known = [m for m in migrations_module.known_migrations() if m.version <= version]
    with monkeypatch.context() as patch:
        patch.setattr(migrations_module, "known_migrations", lambda: known)
        await migrate(db)


async def _indexes(db: Database) -> set[str]:
    if db.dialect == "postgresql":
        rows = await db.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'spend_log'")
    else:
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'spend_log'")
    return {r[0] for r in rows}


async def test_a_database_at_0001_keeps_its_spend_rows_through_0002_and_its_queries_answer(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _migrate_to(db, 1, monkeypatch)
    rows = [row(i, T0 + (i // 3) * 1000) for i in range(600)]
    async with db.transaction() as tx:
        await tx.executemany(OLD_INSERT, [r[:27] for r in rows])  # the columns of 0001 (0003 adds cache_hit)
    assert await migrate(db) == [2, 3]
    stored = await db.fetch(f"SELECT {', '.join(SPEND_COLUMNS)} FROM spend_log")
    assert sorted(stored) == sorted(rows)
    secondary = {"spend_log_tenant", "spend_log_key"} if db.dialect == "postgresql" else set()
    assert {name for name in await _indexes(db) if not name.startswith(("sqlite_", "spend_log_pkey"))} == secondary

    page = await select_spend(db, SpendFilter(tenant="globex", status=429), limit=5)
    wanted = sorted((r for r in rows if r[2] == "globex" and r[20] == 429), key=lambda r: (r[1], r[0]), reverse=True)
    assert page == wanted[:5]
    bill = await select_bill(db, "acme", T0, T0 + 10**9)
    assert sum(line.requests for line in bill) == 200
    await insert_spend(db, rows[:100])  # the writer replaying what 0001 already held
    assert await db.fetchval("SELECT COUNT(*) FROM spend_log") == 600


async def test_a_replayed_batch_never_duplicates_a_row(db: Database) -> None:
    await migrate(db)
    rows = [row(i, T0 + i // 4) for i in range(3000)]  # four requests a millisecond
    await insert_spend(db, rows)
    await insert_spend(db, [*rows[1000:2000], row(5000, T0 + 10_000)])  # a replay overlapping a new row
    await insert_spend(db, [rows[7], rows[7]])  # the same row twice in one batch
    assert await db.fetchval("SELECT COUNT(*) FROM spend_log") == 3001
    assert await db.fetchval("SELECT COUNT(DISTINCT request_id) FROM spend_log") == 3001


async def test_a_bulk_insert_that_fails_leaves_nothing_behind(db: Database) -> None:
    await migrate(db)
    good = [row(i, T0 + i) for i in range(200)]
    bad = row(999, T0 + 999, tenant=None)  # tenant is NOT NULL
    with pytest.raises(DatabaseError):
        await insert_spend(db, [*good, bad])
    assert await db.fetchval("SELECT COUNT(*) FROM spend_log") == 0
    await insert_spend(db, good)  # the connection is usable afterwards (PostgreSQL: its staging table too)
    assert await db.fetchval("SELECT COUNT(*) FROM spend_log") == 200


async def test_copy_records_refuses_a_name_that_is_not_a_plain_identifier(db: Database) -> None:
    with pytest.raises(DatabaseError, match="not a plain name"):
        await db.copy_records("spend_log; DROP TABLE x", ["a"], [(1,)])


class _Recorder:
    """Takes the statements of the spend queries without running them."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Sequence[Any]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        self.statements.append((sql, args))
        return []

    async def execute(self, sql: str, *args: Any) -> int:
        self.statements.append((sql, args))
        return 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise AssertionError("not used")


async def _spend_statements() -> list[tuple[str, Sequence[Any]]]:
    recorder = _Recorder()
    for where in (
        SpendFilter(),
        SpendFilter(tenant="acme"),
        SpendFilter(key_id="acme-k1"),
        SpendFilter(end_user="user-2"),
        SpendFilter(model="claude"),
        SpendFilter(status=429),
        SpendFilter(tenant="acme", status=429, since_ms=T0, until_ms=T0 + 10**6),
        SpendFilter(since_ms=T0, until_ms=T0 + 10**6),
    ):
        await select_spend(recorder, where, limit=100)
        await select_spend(recorder, where, limit=100, before=(T0 + 5000, "req_0000100"))
    await select_bill(recorder, "acme", T0, T0 + 10**6)
    await delete_spend_before(recorder, T0 + 5000)
    return recorder.statements


async def test_every_spend_query_reads_through_an_index_without_sorting_rows(db: Database) -> None:
    await migrate(db)
    await insert_spend(db, [row(i, T0 + i * 7) for i in range(2000)])
    for sql, args in await _spend_statements():
        if db.dialect == "sqlite":
            steps = [r[3] for r in await db.fetch(f"EXPLAIN QUERY PLAN {sql}", *args)]
            # The table has no index but its primary key: a SCAN of it walks (ts_ms, request_id) in order.
            assert all(
                step == "SCAN spend_log" or "USING PRIMARY KEY" in step or step.startswith("LIST SUBQUERY")
                for step in steps
                if step != "USE TEMP B-TREE FOR GROUP BY"
            ), (sql, steps)
        else:
            async with db.transaction() as tx:  # forbid what a table this small would prefer, so "no index" shows
                await tx.execute("SET LOCAL enable_seqscan = off")
                plan = " | ".join(r[0] for r in await tx.fetch(f"EXPLAIN {sql}", *args))
            assert "Seq Scan" not in plan, (sql, plan)
            for column, index in (("tenant", "spend_log_tenant"), ("key_id", "spend_log_key")):
                if f"{column} = $1" in sql:
                    assert index in plan, (sql, plan)
