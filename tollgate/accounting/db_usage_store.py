"""Usage aggregates and alert claims in the database of record (``usage_counters``): the usage store of a database.

The same counters as the Redis usage store (scopes named as its keys without
the prefix, see :mod:`tollgate.database.usage_sql`). A whole :class:`Batch`
is one transaction: one ``executemany`` of upserts that add the deltas, then
one read of the new monthly totals of the tenants it touched. Rows are
written in key order, so two processes flushing at once on PostgreSQL take
their row locks in the same order and never deadlock.

An alert claim is an ``INSERT ... ON CONFLICT DO NOTHING``: exactly one
process changes the row, and only that one fires the alert.

End users: a transaction first asks which of the batch's end users each
month already holds and how many it holds, then writes; on SQLite writers
are serialised, so the cap holds exactly; on PostgreSQL processes that flush
at the same moment can pass it by the new end users of those batches only
(as on Redis).

The database keeps aggregates as data of record: ``daily_ttl`` and
``monthly_ttl`` do not delete them here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tollgate.accounting.aggregates import OTHER_USERS, USER_FIELDS, Batch, add_user_counts
from tollgate.accounting.usage_store import QUOTA_FIELDS, Claim, days_of_month
from tollgate.database import Database, Queries
from tollgate.database import usage_sql as sql

__all__ = [
    "DatabaseUsageStore",
    "alerts_scope",
    "day_scope",
    "month_scope",
    "scope_of_redis_key",
    "tenants_scope",
    "users_scope",
]

_IN_CHUNK = 500  # scopes per ``IN (...)`` list (both engines allow far more parameters; this keeps statements small)


def month_scope(tenant: str, month: str) -> str:
    return f"{{{tenant}}}:m:{month}"


def day_scope(tenant: str, day: str) -> str:
    return f"{{{tenant}}}:d:{day}"


def users_scope(tenant: str, month: str) -> str:
    return f"{{{tenant}}}:u:{month}"


def alerts_scope(tenant: str, month: str) -> str:
    return f"{{{tenant}}}:alerts:{month}"


def tenants_scope(month: str) -> str:
    return f"tenants:{month}"


def scope_of_redis_key(key: str, prefix: str) -> str | None:
    """The scope of a Redis usage store's key (``<prefix>:<scope>``), or None when the key is not one of its."""
    head = prefix + ":"
    return key[len(head) :] if key.startswith(head) and len(key) > len(head) else None


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _IN_CHUNK] for i in range(0, len(items), _IN_CHUNK)]


class DatabaseUsageStore:
    """Aggregates as rows of ``usage_counters``; the :class:`Database` is opened and closed by its owner."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time, max_end_users: int = 10_000) -> None:
        self.db = db
        self._clock = clock
        self._max_users = max_end_users
        self.description = f"database {db.description}"

    async def apply(self, batch: Batch) -> dict[tuple[str, str], dict[str, int]]:
        rows: list[tuple[str, str, int]] = []
        for (tenant, day), fields in batch.days.items():
            scope = day_scope(tenant, day)
            rows.extend((scope, f, v) for f, v in fields.items())
        months: dict[str, tuple[str, str]] = {}
        for (tenant, month), fields in batch.months.items():
            scope = month_scope(tenant, month)
            months[scope] = (tenant, month)
            rows.extend((scope, f, v) for f, v in fields.items())
            rows.extend((scope, f, 0) for f in QUOTA_FIELDS if f not in fields)  # so every total reads back
            rows.append((tenants_scope(month), tenant, 0))
        async with self.db.transaction() as tx:
            for (tenant, month), users in (await self._admitted_users(tx, batch)).items():
                scope = users_scope(tenant, month)
                for user, counts in users.items():
                    rows.extend((scope, f"{f}:{user}", v) for f, v in zip(USER_FIELDS, counts))
            if rows:
                rows.sort(key=lambda r: (r[0], r[1]))  # one lock order for every process
                await tx.executemany(sql.ADD_COUNTER, rows)
            totals: dict[tuple[str, str], dict[str, int]] = {
                period: dict.fromkeys(QUOTA_FIELDS, 0) for period in months.values()
            }
            for chunk in _chunks(list(months)):
                found = await tx.fetch(sql.counters_in(len(chunk), len(QUOTA_FIELDS)), *chunk, *QUOTA_FIELDS)
                for scope, field, value in found:
                    totals[months[scope]][field] = int(value)
        return totals

    async def _admitted_users(self, tx: Queries, batch: Batch) -> dict[tuple[str, str], dict[str, list[int]]]:
        """The batch's end users as they are to be written: a new one past max_end_users goes to OTHER_USERS."""
        if not self._max_users or not batch.users:
            return {}
        periods = {users_scope(t, m): (t, m) for (t, m) in batch.users}
        first = USER_FIELDS[0] + ":"
        held_count: dict[str, int] = {}
        held: set[tuple[str, str]] = set()
        names = sorted({first + u for users in batch.users.values() for u in users} | {first + OTHER_USERS})
        for chunk in _chunks(list(periods)):
            for scope, count in await tx.fetch(sql.count_fields_between(len(chunk)), first, first[:-1] + ";", *chunk):
                held_count[scope] = int(count)
            for names_chunk in _chunks(names):
                found = await tx.fetch(sql.counters_in(len(chunk), len(names_chunk)), *chunk, *names_chunk)
                held.update((scope, field) for scope, field, _value in found)
        out: dict[tuple[str, str], dict[str, list[int]]] = {}
        for scope, (tenant, month) in periods.items():
            users = batch.users[(tenant, month)]
            kept = held_count.get(scope, 0) - (1 if (scope, first + OTHER_USERS) in held else 0)
            room = self._max_users - kept
            admitted: dict[str, list[int]] = {}
            out[(tenant, month)] = admitted
            for user, counts in users.items():
                if (scope, first + user) not in held:
                    if room > 0:
                        room -= 1
                    else:
                        add_user_counts(admitted, OTHER_USERS, counts)
                        continue
                add_user_counts(admitted, user, counts)
        return out

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        if not claims:
            return []
        now = int(self._clock())
        won: list[bool] = []
        async with self.db.transaction() as tx:
            for tenant, month, name in claims:
                won.append(await tx.execute(sql.CLAIM, alerts_scope(tenant, month), name, now) == 1)
        return won

    async def fired(self, tenant: str, month: str) -> list[str]:
        return [str(field) for field, _v in await self.db.fetch(sql.fields_of(), alerts_scope(tenant, month))]

    async def read(self, tenant: str, month: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        scopes = [month_scope(tenant, month)] + [day_scope(tenant, d) for d in days_of_month(month)]
        found = await self.db.fetch(sql.fields_of_scopes(len(scopes)), *scopes)
        by_scope: dict[str, dict[str, Any]] = {}
        for scope, field, value in found:
            by_scope.setdefault(scope, {})[field] = int(value)
        days = {scope.rpartition(":d:")[2]: fields for scope, fields in by_scope.items() if ":d:" in scope}
        return by_scope.get(scopes[0], {}), dict(sorted(days.items()))

    async def tenants(self, month: str) -> list[str]:
        return [str(field) for field, _v in await self.db.fetch(sql.fields_of(), tenants_scope(month))]

    async def users(self, tenant: str, month: str, user: str | None = None) -> dict[str, dict[str, int]]:
        scope = users_scope(tenant, month)
        if user is not None:
            names = [f"{f}:{user}" for f in USER_FIELDS]
            found = await self.db.fetch(sql.scope_fields_in(len(names)), scope, *names)
            if not found:
                return {}
            values = {str(field): int(value) for field, value in found}
            return {user: {f: values.get(f"{f}:{user}", 0) for f in USER_FIELDS}}
        out: dict[str, dict[str, int]] = {}
        for field, value in await self.db.fetch(sql.fields_of(), scope):
            f, _, u = str(field).partition(":")
            out.setdefault(u, dict.fromkeys(USER_FIELDS, 0))[f] = int(value)
        return out

    async def close(self) -> None:
        return None  # the database belongs to the process's state
