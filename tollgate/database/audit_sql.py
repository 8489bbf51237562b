"""The statements of the audit log on ``audit_log`` (one SQL for both engines): append in batches, read newest first."""

from __future__ import annotations

__all__ = ["INSERT_EVENT", "select_events"]

# One event: ``ts_ms``, ``event`` (its kind), ``tenant``, ``key_id``, ``actor``, ``doc`` (the whole event as JSON).
INSERT_EVENT = "INSERT INTO audit_log (ts_ms, event, tenant, key_id, actor, doc) VALUES ($1, $2, $3, $4, $5, $6)"


def select_events(*, tenant: bool, since: bool, until: bool) -> str:
    """``(doc)`` of the events newest first, filtered by what is given, in this order of parameters: tenant,
    since (ms, included), until (ms, included); the last parameter is the row limit."""
    where: list[str] = []
    n = 0
    for column, op, given in (("tenant", "=", tenant), ("ts_ms", ">=", since), ("ts_ms", "<=", until)):
        if given:
            n += 1
            where.append(f"{column} {op} ${n}")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT doc FROM audit_log{clause} ORDER BY ts_ms DESC, id DESC LIMIT ${n + 1}"
