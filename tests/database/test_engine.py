"""The engine contract on SQLite and PostgreSQL: one SQL text with $n placeholders, transactions, wrapped errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tollgate.database import Database, open_database
from tollgate.errors import ConfigError, DatabaseError, DatabaseUnavailable, StoreError, StoreUnavailable

from ..support.postgres import PostgresServer
from ..support.processes import free_port


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.open()
    await database.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score DOUBLE PRECISION)")
    try:
        yield database
    finally:
        await database.close()


async def test_placeholders_numbered_once_work_on_both_engines_in_any_order(db: Database) -> None:
    await db.execute("INSERT INTO items (id, name, score) VALUES ($2, $1, $3)", "a", 1, 0.5)
    await db.executemany("INSERT INTO items (id, name, score) VALUES ($1, $2, $3)", [(2, "b", 1.5), (3, "c", None)])
    assert await db.fetch("SELECT id, name, score FROM items ORDER BY id") == [
        (1, "a", 0.5),
        (2, "b", 1.5),
        (3, "c", None),
    ]
    assert await db.fetchrow("SELECT name FROM items WHERE id = $1 AND name = $2", 2, "b") == ("b",)
    assert await db.fetchrow("SELECT name FROM items WHERE id = $1", 99) is None
    assert await db.fetchval("SELECT COUNT(*) FROM items WHERE score > $1", 0.0) == 2
    assert await db.fetchval("SELECT name FROM items WHERE id = $1", 99) is None


async def test_execute_answers_the_rows_it_changed(db: Database) -> None:
    await db.executemany("INSERT INTO items (id, name) VALUES ($1, $2)", [(1, "a"), (2, "b"), (3, "c")])
    assert await db.execute("UPDATE items SET name = $1 WHERE id >= $2", "z", 2) == 2
    assert await db.execute("DELETE FROM items WHERE id = $1", 42) == 0
    assert await db.execute("INSERT INTO items (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", 1, "x") == 0


async def test_upsert_adds_to_the_existing_row(db: Database) -> None:
    await db.execute(
        "CREATE TABLE counters (scope TEXT NOT NULL, field TEXT NOT NULL, value BIGINT NOT NULL, PRIMARY KEY (scope, field))"
    )
    sql = (
        "INSERT INTO counters (scope, field, value) VALUES ($1, $2, $3) "
        "ON CONFLICT (scope, field) DO UPDATE SET value = counters.value + excluded.value"
    )
    for n in (3, 4):
        await db.execute(sql, "t:acme", "requests", n)
    assert await db.fetchval("SELECT value FROM counters WHERE scope = $1 AND field = $2", "t:acme", "requests") == 7


async def test_transaction_commits_on_exit(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "a")
        assert await tx.fetchval("SELECT COUNT(*) FROM items") == 1
    assert await db.fetchval("SELECT name FROM items WHERE id = $1", 1) == "a"


async def test_transaction_rolls_back_everything_on_an_exception(db: Database) -> None:
    await db.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "kept")
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with db.transaction() as tx:
            await tx.execute("UPDATE items SET name = $1 WHERE id = $2", "lost", 1)
            await tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 2, "lost")
            raise RuntimeError("changed my mind")
    assert await db.fetch("SELECT id, name FROM items") == [(1, "kept")]


async def test_a_bulk_copy_skips_rows_already_there_and_settings_made_after_it_are_reset(db: Database) -> None:
    # PostgreSQL copies straight into the table (falling back to its staging table when a key is there already)
    # and spares the pool its reset query after a COPY: a session setting made by the next user still goes.
    columns = ("id", "name", "score")
    await db.copy_records("items", columns, [(1, "a", 0.5), (2, "b", None)])
    await db.copy_records("items", columns, [(2, "b2", None), (3, "c", 1.0), (3, "c2", 2.0)])
    assert await db.fetch("SELECT id, name FROM items ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    if db.dialect != "postgresql":
        return
    default = await db.fetchval("SHOW work_mem")
    async with db.transaction() as tx:
        await tx.execute("SET work_mem = '1234kB'")  # a session setting: outlives the transaction
        assert await tx.fetchval("SHOW work_mem") == "1234kB"
    assert await db.fetchval("SHOW work_mem") == default
    await db.copy_records("items", columns, [(4, "d", None)])
    await db.execute("SET work_mem = '1234kB'")
    assert await db.fetchval("SHOW work_mem") == default


async def test_a_failed_statement_rolls_back_its_transaction_and_is_wrapped(db: Database) -> None:
    with pytest.raises(DatabaseError) as caught:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "a")
            await tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "duplicate")
    assert not isinstance(caught.value, DatabaseUnavailable)
    assert await db.fetchval("SELECT COUNT(*) FROM items") == 0


async def test_bad_sql_is_a_database_error_quoting_the_statement(db: Database) -> None:
    with pytest.raises(DatabaseError) as caught:
        await db.fetch("SELEKT nothing FROM items")
    assert isinstance(caught.value, StoreError) and not isinstance(caught.value, StoreUnavailable)
    assert "SELEKT nothing FROM items" in str(caught.value)
    with pytest.raises(DatabaseError, match="no_such_table"):
        await db.execute("INSERT INTO no_such_table (a) VALUES ($1)", 1)


async def test_the_description_never_shows_the_password() -> None:
    db = open_database("postgresql://tollgate:s3cret-pw@db.internal:5432/tollgate")
    assert db.dialect == "postgresql"
    assert "s3cret-pw" not in db.description
    assert db.description == "postgresql://tollgate:***@db.internal:5432/tollgate"


def test_a_relative_sqlite_path_is_taken_from_the_base_dir(tmp_path: Path) -> None:
    db = open_database("sqlite:///data/tollgate.db", base_dir=tmp_path)
    assert db.dialect == "sqlite"
    assert db.description == f"sqlite:///{tmp_path / 'data' / 'tollgate.db'}"


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "sqlite:///", "sqlite://relative.db", "postgresql://h:notaport/db", ""]
)
def test_an_unknown_url_is_a_config_error_naming_database_url(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_database(url)
    assert caught.value.problems[0].startswith("database.url: ")


async def test_nothing_listening_is_database_unavailable() -> None:
    db = open_database(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", timeout=2.0)
    with pytest.raises(DatabaseUnavailable):
        await db.open()


async def test_sqlite_file_that_cannot_be_created_is_database_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    db = open_database(f"sqlite:///{blocker / 'tollgate.db'}")
    with pytest.raises(DatabaseUnavailable):
        await db.open()


async def test_stopped_postgres_is_database_unavailable_and_the_pool_recovers(
    pg_server: PostgresServer, postgres_url: str
) -> None:
    db = open_database(postgres_url, timeout=2.0)
    await db.open()
    try:
        assert await db.fetchval("SELECT 1") == 1
        pg_server.stop()
        try:
            with pytest.raises(DatabaseUnavailable):
                await db.fetchval("SELECT 1")
            with pytest.raises(DatabaseUnavailable):
                async with db.transaction() as tx:
                    await tx.execute("SELECT 1")
        finally:
            pg_server.start()
        assert await db.fetchval("SELECT 2") == 2
    finally:
        await db.close()


async def test_notifications_reach_a_listener_on_postgres_and_are_absent_on_sqlite(db: Database) -> None:
    import asyncio

    heard: asyncio.Queue[str] = asyncio.Queue()
    unlisten = await db.listen("tollgate_test", heard.put_nowait)
    if db.dialect == "sqlite":
        assert unlisten is None
        await db.notify("tollgate_test", "ignored")  # a no-op, no error
        return
    assert unlisten is not None
    try:
        await db.notify("tollgate_test", "hello")
        assert await asyncio.wait_for(heard.get(), 5) == "hello"
    finally:
        await unlisten()
