"""Admin routes of the database of record: ``POST /admin/sync`` (a full reload from it) and ``GET /admin/stats``.

``/admin/sync`` rebuilds this process's in-memory registry from the database
(every record, not the changes since a version). ``/admin/stats`` tells an
operator how big the stores are, what waits in memory to be written, when
the registry was last loaded in full and how far this process lags behind
the database's registry version.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic import Field

from tollgate.admin.app_keys import STATE
from tollgate.admin.models import View
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation
from tollgate.admin.responses import json_response
from tollgate.database import Database, schema_status
from tollgate.errors import Conflict, StoreError
from tollgate.registry.stores import DatabaseStore
from tollgate.runtime.state import GatewayState

__all__ = ["DATABASE_ROUTES", "Stats", "Synced"]

TABLES = ("registry_records", "spend_log", "usage_counters", "audit_log", "scaling_history")


class Synced(View):
    """What ``POST /admin/sync`` did."""

    registry_records: int = Field(description="tenant, key, namespace and rule records in force after the load")
    tenants: int
    keys: int
    registry_version: int
    redis_rewritten: list[str] = Field(
        description="the Redis copies rewritten from the database (none: no Redis copy of the database is configured)"
    )
    duration_ms: float


class DatabaseStats(View):
    description: str = Field(description="the database's URL, password masked")
    dialect: str
    reachable: bool
    error: str | None
    schema_version: int | None
    tables: dict[str, int | None] = Field(
        description="rows per table (PostgreSQL: the planner's estimate, pg_class.reltuples; SQLite: exact)"
    )
    rows_exact: bool


class Buffers(View):
    usage_pending: int = Field(description="request records waiting for the next accounting flush")
    usage_carry: int = Field(description="aggregate deltas kept in memory because the usage store refused them")
    audit_pending: int = Field(description="audit events waiting to be written")
    spend_log: int | None = Field(description="spend rows waiting to be written (null: no spend-log buffer here)")


class RegistryStats(View):
    store: str
    version: int = Field(description="the registry version this process has in force")
    database_version: int | None = Field(description="the database's registry version (null: not on the database)")
    lag: int | None = Field(description="database_version minus version: changes this process has not taken yet")
    last_sync: float | None = Field(description="epoch seconds of the last full load (start or POST /admin/sync)")


class Stats(View):
    """Store sizes, buffer depths, the last sync and the registry lag of this process."""

    database: DatabaseStats | None = Field(description="null: no database.url")
    buffers: Buffers
    registry: RegistryStats
    usage_store: str
    audit_store: str


def _database(state: GatewayState) -> Database:
    if state.database is None:
        raise Conflict(
            "this gateway has no database (database.url is not set): there is nothing to sync from",
            code="no_database",
        )
    return state.database


@operation(
    "reload this process's registry from the database in full (not a change poll)",
    tag="database",
    answers={200: DocumentedAnswer("what was loaded, and how long it took", Synced)},
    errors=(409, 503),
    role="operator",
)
async def sync(request: web.Request) -> web.Response:
    state = request.app[STATE]
    db = _database(state)
    registry = state.registry
    if not isinstance(registry.store, DatabaseStore):
        raise Conflict(
            f"the registry lives in {registry.store.description}, not in the database {db.description}: "
            "nothing to sync from the database",
            code="registry_not_in_database",
        )
    started = time.perf_counter()
    records = await registry.resync()
    return json_response(
        {
            "registry_records": records,
            "tenants": len(registry.directory.tenants),
            "keys": len(registry.directory.key_ids),
            "registry_version": registry.version,
            "redis_rewritten": [],
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
    )


async def _table_rows(db: Database) -> tuple[dict[str, int | None], bool]:
    if db.dialect == "postgresql":
        marks = ", ".join(f"${i + 1}" for i in range(len(TABLES)))
        rows = await db.fetch(f"SELECT relname, reltuples FROM pg_class WHERE relname IN ({marks})", *TABLES)
        found: dict[str, int | None] = dict.fromkeys(TABLES)
        for name, estimate in rows:
            found[str(name)] = int(estimate) if estimate is not None and estimate >= 0 else None
        for name in [t for t, n in found.items() if n is None]:  # never analysed yet: small, count it
            found[name] = int(await db.fetchval(f"SELECT COUNT(*) FROM {name}"))
        return found, False
    return {name: int(await db.fetchval(f"SELECT COUNT(*) FROM {name}")) for name in TABLES}, True


async def _database_stats(db: Database) -> tuple[dict[str, Any], int | None]:
    """The database's part of the answer, and its registry version (None when it cannot be read)."""
    out: dict[str, Any] = {
        "description": db.description,
        "dialect": db.dialect,
        "reachable": True,
        "error": None,
        "schema_version": None,
        "tables": dict.fromkeys(TABLES),
        "rows_exact": db.dialect == "sqlite",
    }
    try:
        out["schema_version"] = (await schema_status(db)).current
        out["tables"], out["rows_exact"] = await _table_rows(db)
        version = await db.fetchval("SELECT version FROM registry_version WHERE id = 1")
    except StoreError as exc:
        out["reachable"], out["error"] = False, str(exc)
        return out, None
    return out, int(version or 0)


@operation(
    "store sizes, buffer depths, the last full registry load and the registry lag of this process",
    tag="database",
    answers={200: DocumentedAnswer("the statistics", Stats)},
    role="viewer",
)
async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    accounting, registry = state.accounting, state.registry
    database: dict[str, Any] | None = None
    db_version: int | None = None
    if state.database is not None:
        database, db_version = await _database_stats(state.database)
    on_database = isinstance(registry.store, DatabaseStore)
    spend_log = getattr(accounting, "spend_log", None)
    spend_pending = getattr(spend_log, "pending", None)
    return json_response(
        {
            "database": database,
            "buffers": {
                "usage_pending": accounting.pending,
                "usage_carry": accounting.carried,
                "audit_pending": accounting.audit.pending,
                "spend_log": spend_pending if isinstance(spend_pending, int) else None,
            },
            "registry": {
                "store": registry.store.description,
                "version": registry.version,
                "database_version": db_version if on_database else None,
                "lag": db_version - registry.version if on_database and db_version is not None else None,
                "last_sync": registry.synced_at,
            },
            "usage_store": accounting.store.description,
            "audit_store": accounting.audit.description,
        }
    )


DATABASE_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("POST", "/admin/sync", sync),
    ("GET", "/admin/stats", stats),
)
