"""Every scaling decision, newest first: the database's ``scaling_history`` table, or a bounded memory per pool."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from typing import Any, Protocol

import orjson

from tollgate.database import Database
from tollgate.errors import DatabaseError

__all__ = ["DatabaseHistory", "HistoryStore", "MemoryHistory"]

log = logging.getLogger("tollgate.scaling")

_PENDING_MAX = 10_000


class HistoryStore(Protocol):
    async def append(self, pool: str, ts_ms: int, doc: dict[str, Any]) -> None: ...

    async def page(self, pool: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        """At most ``limit`` decisions of ``pool`` with an id below ``before``, newest first, each with its id."""
        ...


class MemoryHistory:
    """The latest ``size`` decisions of each pool."""

    def __init__(self, size: int) -> None:
        self._ids = itertools.count(1)
        self._size = size
        self._pools: dict[str, deque[dict[str, Any]]] = {}

    async def append(self, pool: str, ts_ms: int, doc: dict[str, Any]) -> None:
        kept = self._pools.setdefault(pool, deque(maxlen=self._size))
        kept.append({"id": next(self._ids), "pool": pool, "ts_ms": ts_ms, **doc})

    async def page(self, pool: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in reversed(self._pools.get(pool, ())):
            if before is None or entry["id"] < before:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out


class DatabaseHistory:
    """Rows of ``scaling_history(id, pool, ts_ms, doc)``; while the database is down, decisions wait in memory
    (bounded) and are written with the next one."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._pending: deque[tuple[str, int, str]] = deque(maxlen=_PENDING_MAX)

    async def append(self, pool: str, ts_ms: int, doc: dict[str, Any]) -> None:
        self._pending.append((pool, ts_ms, orjson.dumps(doc).decode()))
        rows = list(self._pending)
        try:
            await self._db.executemany("INSERT INTO scaling_history (pool, ts_ms, doc) VALUES ($1, $2, $3)", rows)
        except DatabaseError as exc:
            log.warning("scaling: %d decisions wait for the database: %s", len(self._pending), exc)
            return
        self._pending.clear()

    async def page(self, pool: str, limit: int, before: int | None) -> list[dict[str, Any]]:
        if before is None:
            rows = await self._db.fetch(
                "SELECT id, ts_ms, doc FROM scaling_history WHERE pool = $1 ORDER BY id DESC LIMIT $2", pool, limit
            )
        else:
            rows = await self._db.fetch(
                "SELECT id, ts_ms, doc FROM scaling_history WHERE pool = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                pool,
                before,
                limit,
            )
        return [{"id": int(r[0]), "pool": pool, "ts_ms": int(r[1]), **orjson.loads(r[2])} for r in rows]
