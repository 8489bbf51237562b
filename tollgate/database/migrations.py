"""Versioned schema migrations: numbered SQL files shipped in ``tollgate/database/sql``, applied in order under a lock.

A file ``NNNN_name.sql`` holds statements separated by ``;`` at the end of a
line; lines ``-- sqlite:``, ``-- postgresql:`` and ``-- both:`` start a
section for one dialect or both (both until the first such line). Each
migration runs in its own transaction with its row in ``schema_migrations``,
under a lock (PostgreSQL: a transaction-scoped advisory lock on a fixed key;
SQLite: ``BEGIN IMMEDIATE``): of two processes migrating at once one applies,
the other waits, then finds nothing left to do. A database already at a
version this code does not know is refused, naming both versions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

from tollgate.clock import Clock, SystemClock
from tollgate.database.engine import Database, Dialect, Queries
from tollgate.errors import DatabaseError

__all__ = ["LOCK_KEY", "Migration", "SchemaStatus", "check_schema", "known_migrations", "migrate", "schema_status"]

log = logging.getLogger("tollgate.database")

LOCK_KEY = 0x746F6C6C67617465  # "tollgate": the advisory lock every migrating process takes on PostgreSQL
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SECTION = re.compile(r"^--\s*(sqlite|postgresql|both):\s*$")
_STATEMENT_END = re.compile(r";\s*$", re.MULTILINE)
_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # "0001_initial"
    sql: str

    def statements(self, dialect: Dialect) -> list[str]:
        """The statements for ``dialect``, comments left out, in file order."""
        section = "both"
        kept: list[str] = []
        for line in self.sql.splitlines():
            marker = _SECTION.match(line.strip())
            if marker is not None:
                section = marker.group(1)
                continue
            if line.lstrip().startswith("--"):
                continue
            if section in ("both", dialect):
                kept.append(line)
        return [s.strip() for s in _STATEMENT_END.split("\n".join(kept)) if s.strip()]


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: int  # the highest version applied, 0 for an empty database
    latest: int  # the highest version this code knows
    pending: list[str]  # names of the known migrations not applied yet, in order

    @property
    def too_new(self) -> bool:
        return self.current > self.latest


def known_migrations() -> list[Migration]:
    """The migrations shipped with this code, by version."""
    found: list[Migration] = []
    for entry in resources.files("tollgate.database").joinpath("sql").iterdir():
        match = _FILE.match(entry.name)
        if match is not None:
            found.append(Migration(int(match.group(1)), entry.name[: -len(".sql")], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"two migrations share a version: {', '.join(m.name for m in found)}")
    return found


def _too_new(db: Database, current: int, latest: int) -> DatabaseError:
    return DatabaseError(
        f"{db.description} has schema version {current}, newer than this gateway knows ({latest}): "
        "run a gateway at least as new as the one that migrated it"
    )


async def _lock(db: Database, tx: Queries) -> None:
    if db.dialect == "postgresql":  # SQLite's transaction holds the write lock already (BEGIN IMMEDIATE)
        await tx.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)


async def _table_exists(db: Database, q: Queries) -> bool:
    if db.dialect == "postgresql":
        return bool(await q.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"))
    found = await q.fetchval("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
    return bool(found)


async def _applied(db: Database, q: Queries) -> set[int]:
    if not await _table_exists(db, q):
        return set()
    return {int(row[0]) for row in await q.fetch("SELECT version FROM schema_migrations")}


async def migrate(db: Database, *, clock: Clock | None = None) -> list[int]:
    """Apply the known migrations the database lacks, in order, each in its own locked transaction.

    Returns the versions applied here (empty when the schema was current).
    Raises DatabaseError when the database is newer than this code.
    """
    clock = clock or SystemClock()
    known = known_migrations()
    latest = known[-1].version if known else 0
    applied_here: list[int] = []
    while True:
        async with db.transaction() as tx:
            await _lock(db, tx)
            await tx.execute(_TABLE)
            applied = await _applied(db, tx)
            current = max(applied, default=0)
            if current > latest:
                raise _too_new(db, current, latest)
            missing = [m for m in known if m.version not in applied]
            if not missing:
                return applied_here
            migration = missing[0]
            for statement in migration.statements(db.dialect):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                int(clock.time() * 1000),
            )
        log.info("database %s: applied migration %s", db.description, migration.name)
        applied_here.append(migration.version)


async def schema_status(db: Database) -> SchemaStatus:
    """Where the database's schema stands against the migrations this code ships (reads only)."""
    known = known_migrations()
    applied = await _applied(db, db)
    return SchemaStatus(
        current=max(applied, default=0),
        latest=known[-1].version if known else 0,
        pending=[m.name for m in known if m.version not in applied],
    )


async def check_schema(db: Database) -> None:
    """Refuse a database whose schema is newer than this code knows."""
    status = await schema_status(db)
    if status.too_new:
        raise _too_new(db, status.current, status.latest)
