"""The registry store on the database, on SQLite and PostgreSQL: the RegistryStore contract, conflicts, notifications."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tollgate.config import config_from_dict
from tollgate.database import Database, migrate, open_database
from tollgate.registry.registry import Registry
from tollgate.registry.stores import DatabaseStore, RegistryConflict

from ..support.processes import gateway_config


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.open()
    await migrate(database)
    try:
        yield database
    finally:
        await database.close()


async def test_writes_are_loaded_back_and_the_version_grows_with_every_write(db: Database) -> None:
    store = DatabaseStore(db)
    assert (await store.load()).version == 0
    v1 = await store.write({"t:hooli": {"plan": "education"}, "k:hooli-1": {"tenant": "hooli", "sha256": "ab"}})
    v2 = await store.write({"t:hooli": {"plan": "enterprise"}})
    assert v2 > v1 > 0
    loaded = await store.load()
    assert loaded.full and loaded.version == v2
    assert loaded.records == {"t:hooli": {"plan": "enterprise"}, "k:hooli-1": {"tenant": "hooli", "sha256": "ab"}}


async def test_changes_since_names_only_what_changed_after_that_version(db: Database) -> None:
    store = DatabaseStore(db)
    v1 = await store.write({"t:a": {"n": 1}, "t:b": {"n": 1}})
    assert await store.changes_since(v1) is None
    v2 = await store.write({"t:b": {"n": 2}, "t:c": {"n": 1}})
    changes = await store.changes_since(v1)
    assert changes is not None and not changes.full
    assert (changes.version, changes.records) == (v2, {"t:b": {"n": 2}, "t:c": {"n": 1}})


async def test_a_deletion_is_a_tombstone_followers_see_and_a_load_leaves_out(db: Database) -> None:
    store = DatabaseStore(db)
    v1 = await store.write({"t:a": {"n": 1}, "t:b": {"n": 1}})
    v2 = await store.write({"t:a": None})
    changes = await store.changes_since(v1)
    assert changes is not None and changes.records == {"t:a": None} and changes.version == v2
    assert (await store.load()).records == {"t:b": {"n": 1}}
    assert await db.fetchrow("SELECT doc, version FROM registry_records WHERE name = $1", "t:a") == (None, v2)
    # a deleted name may be created again
    await store.write({"t:a": {"n": 3}}, create_only=["t:a"])
    assert (await store.load()).records["t:a"] == {"n": 3}


async def test_a_create_of_an_existing_record_conflicts_and_writes_nothing(db: Database) -> None:
    store = DatabaseStore(db)
    v1 = await store.write({"t:acme": {"plan": "personal"}})
    with pytest.raises(RegistryConflict, match="already exists: acme"):
        await store.write({"t:acme": {"plan": "enterprise"}, "k:new": {"tenant": "acme"}}, create_only=["t:acme"])
    loaded = await store.load()
    assert loaded.version == v1  # the version bump was rolled back with the rest
    assert loaded.records == {"t:acme": {"plan": "personal"}}


async def test_concurrent_creates_of_one_name_let_exactly_one_through(database_url: str, db: Database) -> None:
    others = [open_database(database_url) for _ in range(4)]
    for other in others:
        await other.open()
    try:
        stores = [DatabaseStore(d) for d in (db, *others)]
        results = await asyncio.gather(
            *(s.write({"t:race": {"by": i}}, create_only=["t:race"]) for i, s in enumerate(stores)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, int) for r in results) == 1
        assert sum(isinstance(r, RegistryConflict) for r in results) == len(stores) - 1
        versions = [r for r in results if isinstance(r, int)]
        assert (await stores[0].load()).version == versions[0]
    finally:
        for other in others:
            await other.close()


async def test_a_second_process_follows_through_changes_since(database_url: str, db: Database) -> None:
    other = open_database(database_url)
    await other.open()
    try:
        writer, reader = DatabaseStore(db), DatabaseStore(other)
        start = (await reader.load()).version
        await writer.write({"k:k1": {"tenant": "acme", "status": "active"}})
        await writer.write({"k:k1": {"tenant": "acme", "status": "revoked"}})
        changes = await reader.changes_since(start)
        assert changes is not None and changes.records == {"k:k1": {"tenant": "acme", "status": "revoked"}}
    finally:
        await other.close()


async def test_the_registry_chooses_the_database_store_without_a_registry_section(db: Database) -> None:
    config = config_from_dict(gateway_config("http://127.0.0.1:9/v1", database={"url": "sqlite:///:memory:"}))
    assert isinstance(Registry(config, database=db).store, DatabaseStore)
    explicit = config_from_dict(
        gateway_config("http://127.0.0.1:9/v1", database={"url": "sqlite:///:memory:"}, registry={"file": "r.json"})
    )
    assert not isinstance(Registry(explicit, database=db).store, DatabaseStore)


async def test_a_write_wakes_the_other_registry_at_once_on_postgres(postgres_url: str) -> None:
    """PostgreSQL only: SQLite has no notifications, its followers poll (the poll is tested on both engines)."""
    database_url = postgres_url
    db = open_database(database_url)
    await db.open()
    await migrate(db)
    other = open_database(database_url)
    await other.open()
    config = config_from_dict(
        gateway_config("http://127.0.0.1:9/v1", database={"url": database_url}, registry={"poll_interval": "1s"})
    )
    follower = Registry(config, database=other)
    await follower.open()
    watcher = asyncio.create_task(follower.watch())
    try:
        await asyncio.sleep(0.05)  # the watcher is waiting for its poll interval (1 s)
        await DatabaseStore(db).write({"rule:woken": {"limit": 1}})
        loop = asyncio.get_running_loop()
        started = loop.time()
        while "rule:woken" not in follower.rule_records:
            assert loop.time() - started < 0.9, "not woken by the notification: only the 1 s poll would find it"
            await asyncio.sleep(0.01)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await follower.close()
        await other.close()
        await db.close()
