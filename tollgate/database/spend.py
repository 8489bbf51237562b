"""The spend log's SQL: batch insert, filtered reads newest first by keyset cursor, monthly bills, retention deletes.

One row per answered request (table ``spend_log``, migrations 0001, 0002 and 0003 (``cache_hit``):
primary key ``(ts_ms, request_id)``, so rows append in time order). The writer
(tollgate/accounting/spend_log.py) hands rows in :data:`SPEND_COLUMNS` order;
an insert never duplicates a request (a replayed row repeats its ts_ms and
request_id, and the insert skips a key already there), so a batch replayed after
an outage is harmless. Reads page by that key, never by OFFSET: a page costs the
same at any depth, and rows inserted meanwhile neither repeat nor hide older ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "DELETE_BATCH",
    "SPEND_COLUMNS",
    "BillLine",
    "SpendDatabase",
    "SpendFilter",
    "SpendQueries",
    "delete_spend_before",
    "insert_spend",
    "select_bill",
    "select_spend",
]

SPEND_COLUMNS: tuple[str, ...] = (
    "request_id",
    "ts_ms",
    "tenant",
    "key_id",
    "end_user",
    "namespace",
    "endpoint",
    "model",
    "model_served",
    "provider",
    "upstream",
    "deployment_model",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_reported",
    "cost_nanos",
    "currency",
    "status",
    "error",
    "total_ms",
    "ttfb_ms",
    "stream",
    "cut",
    "attempts",
    "cache_hit",
)
"""The columns of a spend row, in the order a row tuple holds them."""

DELETE_BATCH = 10_000
"""Rows one retention statement deletes at most (short transactions, no long lock on the table)."""

_COLUMN_LIST = ", ".join(SPEND_COLUMNS)
_DELETE = (
    "DELETE FROM spend_log WHERE (ts_ms, request_id) IN "
    "(SELECT ts_ms, request_id FROM spend_log WHERE ts_ms < $1 ORDER BY ts_ms LIMIT $2)"
)


class SpendQueries(Protocol):
    """The statements this module runs: those of a transaction of a Database (tollgate/database/engine.py)."""

    async def execute(self, sql: str, *args: Any) -> int: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


class SpendDatabase(SpendQueries, Protocol):
    """A Database: its statements and its bulk insert."""

    async def copy_records(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...


@dataclass(frozen=True, slots=True)
class SpendFilter:
    """Which spend rows a read takes: every field given must match; times in epoch ms, ``since`` included,
    ``until`` excluded."""

    tenant: str | None = None
    key_id: str | None = None
    end_user: str | None = None
    model: str | None = None
    status: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def where(self, args: list[Any]) -> list[str]:
        """The conditions of the filter, their values appended to ``args`` ($n numbered after what is there)."""
        conditions: list[str] = []
        for column, value in (
            ("tenant", self.tenant),
            ("key_id", self.key_id),
            ("end_user", self.end_user),
            ("model", self.model),
            ("status", self.status),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        if self.since_ms is not None:
            args.append(self.since_ms)
            conditions.append(f"ts_ms >= ${len(args)}")
        if self.until_ms is not None:
            args.append(self.until_ms)
            conditions.append(f"ts_ms < ${len(args)}")
        return conditions


async def insert_spend(db: SpendDatabase, rows: Sequence[Sequence[Any]]) -> None:
    """Insert ``rows`` (:data:`SPEND_COLUMNS` order) in one bulk insert and one transaction (Database.copy_records:
    PostgreSQL's COPY, SQLite's many rows per statement); a request already there is left as it is.

    Rows go in the order given, not sorted by the primary key: the writer's rows come in the order requests ended,
    within milliseconds of key order, so each batch lands at the table's end anyway, and a sort by (ts_ms,
    request_id) cost more CPU (about 1 µs a row, for its key tuples) than it saved on either engine.
    """
    if not rows:
        return
    await db.copy_records("spend_log", SPEND_COLUMNS, rows)


async def select_spend(
    db: SpendQueries, where: SpendFilter, *, limit: int, before: tuple[int, str] | None = None
) -> list[tuple[Any, ...]]:
    """Up to ``limit`` rows matching ``where``, newest first (ts_ms, then request_id, descending).

    ``before`` is the (ts_ms, request_id) of the last row of the previous page: the page starts just after it.
    """
    args: list[Any] = []
    conditions = where.where(args)
    if before is not None:
        args.extend(before)
        n = len(args)
        conditions.append(f"(ts_ms < ${n - 1} OR (ts_ms = ${n - 1} AND request_id < ${n}))")
    args.append(limit)
    sql = (
        f"SELECT {_COLUMN_LIST} FROM spend_log"
        + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
        + f" ORDER BY ts_ms DESC, request_id DESC LIMIT ${len(args)}"
    )
    return await db.fetch(sql, *args)


@dataclass(frozen=True, slots=True)
class BillLine:
    """One model's sums in a bill: the model that served (the one asked for when none served) and the currency."""

    model: str | None
    currency: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_nanos: int


async def select_bill(db: SpendQueries, tenant: str, since_ms: int, until_ms: int) -> list[BillLine]:
    """The tenant's spend rows in [since_ms, until_ms) summed per model and currency, by model name."""
    rows = await db.fetch(
        "SELECT COALESCE(model_served, model) AS billed, currency, COUNT(*), "
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(prompt_tokens), SUM(completion_tokens), "
        "SUM(cached_tokens), SUM(cache_write_tokens), SUM(reasoning_tokens), SUM(cost_nanos) "
        "FROM spend_log WHERE tenant = $1 AND ts_ms >= $2 AND ts_ms < $3 "
        "GROUP BY COALESCE(model_served, model), currency",
        tenant,
        since_ms,
        until_ms,
    )
    lines = [BillLine(r[0], r[1], *(int(v or 0) for v in r[2:])) for r in rows]
    lines.sort(key=lambda line: (line.model or "", line.currency))
    return lines


async def delete_spend_before(db: SpendQueries, cutoff_ms: int, *, batch: int = DELETE_BATCH) -> int:
    """Delete up to ``batch`` rows older than ``cutoff_ms`` (oldest first); how many went. Call until it is < batch."""
    return await db.execute(_DELETE, cutoff_ms, batch)
