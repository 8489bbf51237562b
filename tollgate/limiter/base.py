"""The limiter's stores and state: which store holds a tenant's counters, its engine, what every part shares."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.clock import Clock
from tollgate.limiter.decision import Charge
from tollgate.limiter.keys import KeyBuilder
from tollgate.limiter.local_cache import OverLimitCache
from tollgate.limiter.slot_groups import Layout
from tollgate.limiter.spec import LimitSpec
from tollgate.limiter.store.engine import ScriptEngine

__all__ = ["LOCAL_STORE", "LimiterBase", "LimiterStats"]

LOCAL_STORE = "local"  # the name charges carry when the embedded fallback took them


@dataclass(slots=True)
class LimiterStats:
    admissions: int = 0
    cache_hits: int = 0  # refused by the over-limit cache, no store call
    degraded: int = 0  # decisions where a store failed and fail modes answered
    compensations: int = 0  # earlier groups refunded because a later group refused
    replayed: int = 0  # settle charges and lease releases applied late, once their store answered again
    unsettled_dropped: int = 0  # kept ones pushed out by newer ones past UNSETTLED_LIMIT (left to their TTL)


class LimiterBase:
    """The state of a :class:`~tollgate.limiter.Limiter` and the stores it routes to; its parts add the methods."""

    def __init__(
        self,
        stores: Mapping[str, ScriptEngine],
        *,
        clock: Clock,
        default_store: str | None = None,
        local: ScriptEngine | None = None,
        instances: int = 1,
        key_prefix: str = "tg",
        cache_size: int = 10_000,
        plan_routes: Mapping[str, str] | None = None,
        tenant_routes: Mapping[str, str] | None = None,
    ) -> None:
        if not stores:
            raise ValueError("a limiter needs at least one store")
        self._stores = dict(stores)
        self.default_store = default_store or next(iter(self._stores))
        for target in [self.default_store, *(plan_routes or {}).values(), *(tenant_routes or {}).values()]:
            if target not in self._stores:
                raise ValueError(f"unknown store {target!r}")
        if LOCAL_STORE in self._stores:
            raise ValueError(f"{LOCAL_STORE!r} is reserved for the embedded fallback")
        self._local = local
        self._instances = max(1, instances)
        self._clock = clock
        self._keys = KeyBuilder(key_prefix)
        self._background: set[asyncio.Task[Any]] = set()  # refunds of abandoned admissions
        self._layouts: dict[tuple[int, bool], Layout] = {}  # (id(specs), single slot) -> layout; holds the tuple too
        self._settle_limits: dict[int, tuple[LimitSpec, str]] = {}  # id(spec) -> (spec, settle.lua's packed limit)
        self._cache = OverLimitCache(cache_size)
        self._plan_routes = dict(plan_routes or {})
        self._tenant_routes = dict(tenant_routes or {})
        self.stats = LimiterStats()
        # (charge, delta) that settle.lua could not apply because the store was unreachable, per store
        self._unsettled: dict[str, deque[tuple[Charge, int]]] = {}
        self._replay_wake: asyncio.Event | None = None
        self._replayer: asyncio.Task[None] | None = None

    def store_for(self, *, tenant: str | None = None, plan: str | None = None) -> str:
        """The store holding a tenant's counters: by tenant, else by plan, else the default."""
        if tenant is not None and tenant in self._tenant_routes:
            return self._tenant_routes[tenant]
        if plan is not None and plan in self._plan_routes:
            return self._plan_routes[plan]
        return self.default_store

    def engine(self, store: str | None = None) -> ScriptEngine:
        return self._engine(store or self.default_store)

    def _engine(self, name: str) -> ScriptEngine:
        if name == LOCAL_STORE and self._local is not None:
            return self._local
        try:
            return self._stores[name]
        except KeyError:
            raise ValueError(f"unknown store {name!r}") from None

    def key(self, spec: LimitSpec) -> str:
        """The counter key of a limit (for the admin API and tests)."""
        return self._keys.key(spec)
