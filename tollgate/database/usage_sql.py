"""The statements of usage aggregates and alert claims on ``usage_counters`` (one SQL for both engines).

A row is one counter of one scope, as the Redis usage store keeps one field
of one hash: ``scope`` is the Redis key without its prefix
(``{acme}:m:2025-06``, ``{acme}:d:2025-06-14``, ``{acme}:u:2025-06``,
``{acme}:alerts:2025-06``, ``tenants:2025-06``), ``field`` the hash field.
"""

from __future__ import annotations

__all__ = [
    "ADD_COUNTER",
    "CLAIM",
    "COUNT_SCOPES",
    "SET_COUNTER",
    "count_fields_between",
    "counters_in",
    "fields_of",
    "fields_of_scopes",
    "scope_fields_in",
]

# Add ``$3`` to the counter (``$1``, ``$2``), creating it at ``$3``.
ADD_COUNTER = (
    "INSERT INTO usage_counters (scope, field, value) VALUES ($1, $2, $3) "
    "ON CONFLICT (scope, field) DO UPDATE SET value = usage_counters.value + excluded.value"
)
# Set the counter (``$1``, ``$2``) to ``$3`` whatever it held (an import: running it twice gives the same counters).
SET_COUNTER = (
    "INSERT INTO usage_counters (scope, field, value) VALUES ($1, $2, $3) "
    "ON CONFLICT (scope, field) DO UPDATE SET value = excluded.value"
)
# Take the counter (``$1``, ``$2``) at ``$3`` unless it exists: one row changed means this caller won the claim.
CLAIM = "INSERT INTO usage_counters (scope, field, value) VALUES ($1, $2, $3) ON CONFLICT (scope, field) DO NOTHING"
COUNT_SCOPES = "SELECT COUNT(DISTINCT scope) FROM usage_counters"


def _marks(start: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


def fields_of(order: str = "field") -> str:
    """``(field, value)`` of the scope ``$1``."""
    return f"SELECT field, value FROM usage_counters WHERE scope = $1 ORDER BY {order}"


def fields_of_scopes(scopes: int) -> str:
    """``(scope, field, value)`` of the ``scopes`` scopes given as ``$1..$n``."""
    return f"SELECT scope, field, value FROM usage_counters WHERE scope IN ({_marks(1, scopes)})"


def counters_in(scopes: int, fields: int) -> str:
    """``(scope, field, value)`` of the given fields (``$n+1..``) of the given scopes (``$1..$n``)."""
    return (
        f"SELECT scope, field, value FROM usage_counters WHERE scope IN ({_marks(1, scopes)}) "
        f"AND field IN ({_marks(scopes + 1, fields)})"
    )


def scope_fields_in(fields: int) -> str:
    """``(field, value)`` of the scope ``$1`` among the given fields ``$2..``."""
    return f"SELECT field, value FROM usage_counters WHERE scope = $1 AND field IN ({_marks(2, fields)})"


def count_fields_between(scopes: int) -> str:
    """``(scope, count)`` of the fields ``$1 <= field < $2`` in each of the scopes ``$3..`` (the end users held)."""
    return (
        "SELECT scope, COUNT(*) FROM usage_counters "
        f"WHERE scope IN ({_marks(3, scopes)}) AND field >= $1 AND field < $2 GROUP BY scope"
    )
