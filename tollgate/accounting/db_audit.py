"""The audit log's events in the database of record (``audit_log``): appended in one batch per flush, read newest first.

Each row keeps the whole event as JSON in ``doc``, with the columns a reader
filters on (time, kind, tenant, key id, actor) beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from tollgate.database import Database
from tollgate.database import audit_sql as sql

__all__ = ["DatabaseAuditStore"]


def _key_id(event: dict[str, Any]) -> str | None:
    target = event.get("target")
    if isinstance(target, str) and target.startswith("key:"):
        return target[len("key:") :]
    detail = event.get("detail")
    key_id = detail.get("key_id") if isinstance(detail, dict) else None
    return key_id if isinstance(key_id, str) else None


class DatabaseAuditStore:
    """Where :class:`~tollgate.accounting.audit.AuditLog` writes when there is a database; the database is its owner's."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.description = f"database {db.description}"

    async def append(self, events: Sequence[dict[str, Any]]) -> None:
        rows = [
            (
                int(ev["ts"] * 1000),
                str(ev["kind"]),
                ev.get("tenant"),
                _key_id(ev),
                ev.get("actor"),
                orjson.dumps(ev).decode(),
            )
            for ev in events
        ]
        async with self.db.transaction() as tx:
            await tx.executemany(sql.INSERT_EVENT, rows)

    async def events(
        self, tenant: str | None, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first, filtered by tenant and time (Unix seconds, both ends included)."""
        args: list[Any] = []
        if tenant is not None:
            args.append(tenant)
        if since is not None:
            args.append(math.floor(since * 1000))
        if until is not None:
            args.append(math.ceil(until * 1000))
        query = sql.select_events(tenant=tenant is not None, since=since is not None, until=until is not None)
        rows = await self.db.fetch(query, *args, limit)
        out: list[dict[str, Any]] = [orjson.loads(doc) for (doc,) in rows]
        # The row's millisecond time is the event's rounded down: keep the exact bounds of the seconds asked for.
        return [ev for ev in out if (since is None or ev["ts"] >= since) and (until is None or ev["ts"] <= until)]
