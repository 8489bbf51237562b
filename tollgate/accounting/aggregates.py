"""Per-tenant usage aggregates by day and by month: folded in memory per batch, applied to a store in one round trip.

A period's aggregate is a flat mapping of integer fields::

    requests  errors  prompt_tokens  completion_tokens  cost_n  (cost in nanos)
    cached_tokens  cache_write_tokens   (the parts of prompt_tokens read from and written to a prompt cache)
    est_requests  est_prompt_tokens  est_completion_tokens   (the part that was estimated)
    cache_hits  cache_saved_tokens  cache_saved_cost_n   (answered from the response cache: counted in requests
                                                          and cost_n at the cache's price, no tokens; what they saved)
    m:<model>:requests  m:<model>:prompt_tokens  m:<model>:completion_tokens  m:<model>:cost_n
    m:<model>:cached_tokens  m:<model>:cache_write_tokens

A cache field (prompt cache or response cache) is written only once it has something to count (a reader takes a missing field as 0), so
the aggregates of traffic without a prompt cache hold the fields they always held.

kept under ``<prefix>:{<tenant>}:m:<YYYY-MM>`` and ``<prefix>:{<tenant>}:d:<YYYY-MM-DD>``
(Redis hashes with a TTL, or entries of the file/memory document).

Per end user (``identity.end_user``) and month, only :data:`USER_FIELDS`, under
``<prefix>:{<tenant>}:u:<YYYY-MM>``: at most ``usage.max_end_users`` end users
of a tenant a month are kept apart; the usage of later ones is added up under
:data:`OTHER_USERS` (an end user is never the empty string).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from tollgate.accounting.pricing import to_money
from tollgate.accounting.records import Entry
from tollgate.accounting.tally import Tally

__all__ = [
    "MODEL_FIELDS",
    "OTHER_USERS",
    "TOTAL_FIELDS",
    "USER_FIELDS",
    "Batch",
    "PeriodClock",
    "add_user_counts",
    "cache_savings",
    "day_of",
    "month_of",
    "split_models",
    "usage_amounts",
]

TOTAL_FIELDS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost_n",
    "cached_tokens",
    "cache_write_tokens",
    "est_requests",
    "est_prompt_tokens",
    "est_completion_tokens",
    "cache_hits",
    "cache_saved_tokens",
    "cache_saved_cost_n",
)
MODEL_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_n", "cached_tokens", "cache_write_tokens")
USER_FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_n")
# The end users of a tenant's month past usage.max_end_users, added up.
OTHER_USERS = ""


def add_user_counts(table: dict[str, list[int]], user: str, counts: tuple[int, ...] | list[int]) -> None:
    """Add ``counts`` (of :data:`USER_FIELDS`, in order) to ``user``'s in ``table``."""
    target = table.get(user)
    if target is None:
        table[user] = list(counts)
    else:
        for i, v in enumerate(counts):
            target[i] += v


def month_of(wall: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(wall))


def day_of(wall: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(wall))


class PeriodClock:
    """The UTC day and month of a wall time, recomputed only when the day changes."""

    __slots__ = ("_start", "_end", "_day", "_month")

    def __init__(self) -> None:
        self._start = 0.0
        self._end = -1.0
        self._day = ""
        self._month = ""

    def periods(self, wall: float) -> tuple[str, str]:
        if not self._start <= wall < self._end:
            self._start = wall - (wall % 86400)
            self._end = self._start + 86400
            self._day = day_of(wall)
            self._month = month_of(wall)
        return self._day, self._month


class Batch:
    """The deltas of a batch of entries, per (tenant, month) and (tenant, day), and per end user of a (tenant, month)."""

    __slots__ = ("months", "days", "users", "periods")

    def __init__(self) -> None:
        self.months: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.days: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        # (tenant, month) -> end user -> the deltas of USER_FIELDS, in that order
        self.users: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(dict)
        self.periods = PeriodClock()

    def __bool__(self) -> bool:
        return bool(self.months)

    def add(self, e: Entry) -> None:
        errors = 1 if e.status >= 400 else 0
        self.add_counts(
            e.tenant,
            e.wall,
            e.priced_model,
            1,
            errors,
            e.prompt_tokens,
            e.completion_tokens,
            e.cost_nanos,
            estimated=not e.usage_reported,
            cached_tokens=e.cached_tokens,
            cache_write_tokens=e.cache_write_tokens,
        )
        if e.cache_hit:
            self.add_cache_hits(e.tenant, e.wall, 1, e.saved_tokens, e.saved_cost_nanos)
        if e.user is not None:
            self.add_user(e.tenant, e.wall, e.user, (1, errors, e.prompt_tokens, e.completion_tokens, e.cost_nanos))

    def add_user(self, tenant: str, wall: float, user: str, counts: tuple[int, ...] | list[int]) -> None:
        """The deltas (of :data:`USER_FIELDS`, in order) of one end user of ``tenant`` at ``wall``."""
        _day, month = self.periods.periods(wall)
        add_user_counts(self.users[(tenant, month)], user, counts)

    def add_counts(
        self,
        tenant: str,
        wall: float,
        model: str | None,
        requests: int,
        errors: int,
        prompt_tokens: int,
        completion_tokens: int,
        cost_nanos: int,
        *,
        estimated: bool,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> None:
        """``requests`` requests of ``tenant`` on ``model`` at ``wall`` (``errors`` of them with status >= 400);
        ``cached_tokens`` and ``cache_write_tokens`` are parts of ``prompt_tokens``."""
        day, month = self.periods.periods(wall)
        m = f"m:{model or 'unknown'}:"
        for target in (self.months[(tenant, month)], self.days[(tenant, day)]):
            target["requests"] += requests
            if errors:
                target["errors"] += errors
            target["prompt_tokens"] += prompt_tokens
            target["completion_tokens"] += completion_tokens
            target["cost_n"] += cost_nanos
            if estimated:
                target["est_requests"] += requests
                target["est_prompt_tokens"] += prompt_tokens
                target["est_completion_tokens"] += completion_tokens
            target[m + "requests"] += requests
            target[m + "prompt_tokens"] += prompt_tokens
            target[m + "completion_tokens"] += completion_tokens
            target[m + "cost_n"] += cost_nanos
            if cached_tokens:
                target["cached_tokens"] += cached_tokens
                target[m + "cached_tokens"] += cached_tokens
            if cache_write_tokens:
                target["cache_write_tokens"] += cache_write_tokens
                target[m + "cache_write_tokens"] += cache_write_tokens

    def add_cache_hits(self, tenant: str, wall: float, hits: int, saved_tokens: int, saved_cost_nanos: int) -> None:
        """What ``hits`` answers from the response cache saved ``tenant`` at ``wall`` (their requests and charge
        are added by :meth:`add_counts`)."""
        day, month = self.periods.periods(wall)
        for target in (self.months[(tenant, month)], self.days[(tenant, day)]):
            target["cache_hits"] += hits
            if saved_tokens:
                target["cache_saved_tokens"] += saved_tokens
            if saved_cost_nanos:
                target["cache_saved_cost_n"] += saved_cost_nanos

    def add_tally(self, tally: Tally) -> None:
        """The deltas of a flush's groups; requests that never reached an upstream are not billed nor counted, but
        for those answered from the response cache (requests billed at the cache's price, and what they saved)."""
        for (tenant, _plan, priced, upstream, status, reported, day), g in tally:
            if upstream is None and g.cache_hits:
                wall = day * 86400.0
                self.add_counts(tenant, wall, priced, g.cache_hits, 0, 0, 0, g.cache_cost_nanos, estimated=False)
                self.add_cache_hits(tenant, wall, g.cache_hits, g.saved_tokens, g.saved_cost_nanos)
            if upstream is not None:
                n = g.requests
                self.add_counts(
                    tenant,
                    day * 86400.0,
                    priced,
                    n,
                    n if status >= 400 else 0,
                    g.prompt_tokens,
                    g.completion_tokens,
                    g.cost_nanos,
                    estimated=not reported,
                    cached_tokens=g.cached_tokens,
                    cache_write_tokens=g.cache_write_tokens,
                )
        for (tenant, user, day), counts in tally.users.items():
            self.add_user(tenant, day * 86400.0, user, counts)

    def merge(self, other: Batch) -> None:
        """Fold ``other`` (a batch that could not be written) into this one."""
        for mine, theirs in ((self.months, other.months), (self.days, other.days)):
            for key, fields in theirs.items():
                target = mine[key]
                for f, v in fields.items():
                    target[f] += v
        for key, users in other.users.items():
            table = self.users[key]
            for user, counts in users.items():
                add_user_counts(table, user, counts)

    def size(self) -> int:
        return len(self.months) + len(self.days) + sum(len(u) for u in self.users.values())


def split_models(fields: Mapping[Any, Any]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """A stored aggregate as (totals, {model: fields}); its names are bytes when Redis gave them."""
    totals = dict.fromkeys(TOTAL_FIELDS, 0)
    models: dict[str, dict[str, int]] = {}
    for raw_key, raw_value in fields.items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        value = int(raw_value)
        if key.startswith("m:"):
            model, _, f = key[2:].rpartition(":")
            models.setdefault(model, dict.fromkeys(MODEL_FIELDS, 0))[f] = value
        else:
            totals[key] = value
    return totals, models


def usage_amounts(fields: Mapping[str, int]) -> dict[str, Any]:
    """A usage counter hash as reports show it: requests, tokens (and their total), cost in the currency."""
    prompt, completion = fields.get("prompt_tokens", 0), fields.get("completion_tokens", 0)
    return {
        "requests": fields.get("requests", 0),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cost": to_money(fields.get("cost_n", 0)),
    }


def cache_savings(fields: Mapping[str, int]) -> dict[str, Any]:
    """What the response cache answered of a usage counter hash: hits, the tokens and cost they saved."""
    return {
        "hits": fields.get("cache_hits", 0),
        "saved_tokens": fields.get("cache_saved_tokens", 0),
        "saved_cost": to_money(fields.get("cache_saved_cost_n", 0)),
    }
