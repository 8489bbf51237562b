"""A flush's records folded into groups of identical labels, so metrics, SLA and aggregates are updated once per group.

A group is every record of the batch with the same tenant, plan, billed
model, upstream, status, usage source and UTC day: what any metric label or
aggregate key is made of. Per record the flusher only derives the fields
(:func:`~.records.fields_of`), finds its group and appends four latencies;
the :class:`~.records.Entry` is built only for a record the security watch
looks at (the access log renders its lines from the fields themselves).
Consumers then read the groups:
:meth:`GatewayMetrics.apply <.metrics.GatewayMetrics.apply>`,
:meth:`SlaTracker.observe_many <.sla.SlaTracker.observe_many>`,
:meth:`Batch.add_group <.aggregates.Batch.add_group>`. The end user is no part of a group
(it is never a metric label): its sums are kept apart, for the usage aggregates only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tollgate.accounting.records import Entry, Fields, fields_of

__all__ = ["Group", "GroupKey", "Tally"]

# tenant, plan, billed model, upstream, status, usage reported, UTC day (days since the epoch: wall // 86400)
GroupKey = tuple[str, str | None, str | None, str | None, int, bool, float]

_DAY = 86400.0


class Group:
    """The records of one group: token and cost sums, and every latency in seconds (upstream and TTFB when there was one).

    ``cached_tokens`` and ``cache_write_tokens`` are the parts of ``prompt_tokens`` read from and written to the
    provider's prompt cache. ``cache_hits`` are the requests answered from the gateway's response cache (no
    upstream: in groups without one), ``cache_cost_nanos`` what they were billed (part of ``cost_nanos``), and
    ``saved_tokens`` and ``saved_cost_nanos`` the tokens of the answers they replayed and those tokens' cost.
    """

    __slots__ = (
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "cost_nanos",
        "total_s",
        "upstream_s",
        "overhead_s",
        "ttfb_s",
        "cache_hits",
        "cache_cost_nanos",
        "saved_tokens",
        "saved_cost_nanos",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.cost_nanos = 0
        self.total_s: list[float] = []  # one per record: its length is the group's request count
        self.upstream_s: list[float] = []
        self.overhead_s: list[float] = []
        self.ttfb_s: list[float] = []
        self.cache_hits = 0
        self.cache_cost_nanos = 0
        self.saved_tokens = 0
        self.saved_cost_nanos = 0

    @property
    def requests(self) -> int:
        return len(self.total_s)


class Tally:
    """Folds records (:data:`~.records.Record` tuples) into :class:`Group` s, in first-seen order.

    ``log_wanted(status, client_disconnected)`` says whether the access log
    takes a record (``None``: it takes none); ``watched`` are the statuses the
    security watch looks at; with ``log_all`` the access log takes every record
    (no call per record). In record order, :attr:`logged` holds the fields of
    the records logged and :attr:`watched_entries` the entries of those watched. :attr:`principals` is the last
    principal seen per tenant. :attr:`users` sums, per (tenant, end user, UTC
    day), the requests that reached an upstream and had an end user: requests,
    errors, prompt and completion tokens, cost in nanos. With ``keep_fields``,
    :attr:`fields` holds every record's entry fields, in record order (the spend log's rows).
    """

    __slots__ = (
        "groups",
        "logged",
        "watched_entries",
        "principals",
        "users",
        "records",
        "fields",
        "_pricing",
        "_log_wanted",
        "_log_all",
        "_watched",
    )

    def __init__(
        self,
        pricing: Any,
        log_wanted: Callable[[int, bool], bool] | None,
        watched: frozenset[int],
        *,
        keep_fields: bool = False,
        log_all: bool = False,
    ) -> None:
        self.groups: dict[GroupKey, Group] = {}
        self.fields: list[tuple[Any, ...]] | None = [] if keep_fields else None
        self.logged: list[Fields] = []
        self.watched_entries: list[Entry] = []
        self.principals: dict[str, Any] = {}
        self.users: dict[tuple[str, str, float], list[int]] = {}
        self.records = 0
        self._pricing = pricing
        self._log_wanted = log_wanted
        self._log_all = log_all
        self._watched = watched

    def fold(self, records: Iterable[tuple[Any, ...]]) -> None:
        groups, principals, users, pricing = self.groups, self.principals, self.users, self._pricing
        log_all, log_wanted, watched, logged, watched_entries, kept = (
            self._log_all,
            self._log_wanted,
            self._watched,
            self.logged,
            self.watched_entries,
            self.fields,
        )
        n = 0
        last_key: GroupKey | None = None
        g = Group()  # replaced at the first record: no key equals None
        for rec in records:
            n += 1
            f = fields_of(rec, pricing)
            if kept is not None:
                kept.append(f)
            (
                _rid,
                wall,
                tenant,
                _key_id,
                user,
                plan,
                _ns,
                _endpoint,
                _model,
                _served,
                priced,
                upstream,
                _provider,
                _deployment_model,
                status,
                _error,
                _stream,
                disconnected,
                _ip,
                prompt,
                completion,
                cached,
                cache_write,
                _reasoning,
                reported,
                cost,
                total,
                upstream_s,
                overhead_s,
                ttfb_s,
                _attempts,
                principal,
                hit,
                saved_tokens,
                saved_cost,
            ) = f
            key = (tenant, plan, priced, upstream, status, reported, wall // _DAY)
            if key != last_key:  # a busy tenant's records come in runs of one group: a comparison, no hash
                last_key = key
                found = groups.get(key)
                if found is None:
                    found = groups[key] = Group()
                g = found
            g.total_s.append(total)
            g.overhead_s.append(overhead_s)
            if upstream is not None:
                g.upstream_s.append(upstream_s)
            if ttfb_s is not None:
                g.ttfb_s.append(ttfb_s)
            if prompt:
                g.prompt_tokens += prompt
            if completion:
                g.completion_tokens += completion
            if cached:
                g.cached_tokens += cached
            if cache_write:
                g.cache_write_tokens += cache_write
            if cost:
                g.cost_nanos += cost
            if hit:
                g.cache_hits += 1
                g.cache_cost_nanos += cost
                g.saved_tokens += saved_tokens
                g.saved_cost_nanos += saved_cost
            if principal is not None:
                principals[tenant] = principal
            if user is not None and upstream is not None:
                ukey = (tenant, user, key[6])
                u = users.get(ukey)
                if u is None:
                    users[ukey] = [1, 1 if status >= 400 else 0, prompt, completion, cost]
                else:
                    u[0] += 1
                    if status >= 400:
                        u[1] += 1
                    u[2] += prompt
                    u[3] += completion
                    u[4] += cost
            if status in watched:
                watched_entries.append(Entry(*f))
            if log_all or (log_wanted is not None and log_wanted(status, disconnected)):
                logged.append(f)
        self.records += n

    def __iter__(self) -> Iterator[tuple[GroupKey, Group]]:
        return iter(self.groups.items())

    def __bool__(self) -> bool:
        return bool(self.groups)
