"""The ``Limiter``: all-or-nothing admission over limits grouped by hash slot, fail modes, settle, leases, peek.

Policy only: it builds keys and arguments and reads replies; the scripts in
``lua/`` decide, an engine from ``tollgate.limiter.store`` runs them. It never
imports a Redis client. Settlements and lease releases that could not reach
their store (:class:`StoreUnavailable`: circuit open, no connection) are kept
and applied when the store answers again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import operator
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tollgate.clock import Clock
from tollgate.errors import StoreError, StoreOverloaded, StoreUnavailable
from tollgate.limiter.decision import (
    Charge,
    Consumed,
    Decision,
    Extension,
    Lease,
    LimitState,
    Reservation,
    SettledLimit,
    Settlement,
)
from tollgate.limiter.keys import KeyBuilder
from tollgate.limiter.local_cache import OverLimitCache
from tollgate.limiter.spec import LimitSpec
from tollgate.limiter.store.engine import ScriptEngine

__all__ = ["FAIL_CLOSED_RETRY_MS", "LOCAL_STORE", "Limiter", "LimiterStats"]

LOCAL_STORE = "local"  # the name charges carry when the embedded fallback took them
FAIL_CLOSED_RETRY_MS = 1000  # what a fail_closed refusal tells the client to wait
_ADMIT_STRIDE = 6
# Charges per settle.lua call when finishing a batch of requests (keeps one script call short on Redis).
FINISH_BATCH = 256
_EXTEND_STRIDE = 3
# Settle charges and lease releases kept per store while it cannot be reached (the oldest go first past it),
# and how often they are tried again.
UNSETTLED_LIMIT = 10_000
REPLAY_INTERVAL = 0.1
# What a request really used: one amount for every limit of its reservation, or one per unit.
Actual = int | Consumed
# One finished request for Limiter.finish_many: its reservation, what it really used, its lease.
Finished = tuple[Reservation | None, Actual, Lease | None]


def _actual(actual: Actual, unit: str) -> int:
    return actual if type(actual) is int else getattr(actual, unit)  # type: ignore[no-any-return]


@dataclass(slots=True)
class LimiterStats:
    admissions: int = 0
    cache_hits: int = 0  # refused by the over-limit cache, no store call
    degraded: int = 0  # decisions where a store failed and fail modes answered
    compensations: int = 0  # earlier groups refunded because a later group refused
    replayed: int = 0  # settle charges and lease releases applied late, once their store answered again
    unsettled_dropped: int = 0  # kept ones pushed out by newer ones past UNSETTLED_LIMIT (left to their TTL)


class _Item(NamedTuple):
    index: int
    spec: LimitSpec
    key: str
    tag: str
    args: tuple[Any, ...] | None  # the 6 ARGV of admit.lua; None for a lease, whose id is drawn per request


def _param(spec: LimitSpec, lease_id: str) -> str:
    kind = spec.kind
    if kind == "sliding_window":
        return str(spec.slots)
    if kind == "fixed_window":
        return spec.calendar or ""
    if kind == "concurrency":
        return lease_id
    return ""


def _limit_args(s: LimitSpec, lease_id: str) -> tuple[Any, ...]:
    """One limit's 6 ARGV of admit.lua / peek.lua."""
    return (s.kind, s.limit, s.window_ms, s.cost, _param(s, lease_id), "1" if s.shadow else "0")


def _args(specs: Sequence[LimitSpec], lease_id: str) -> list[Any]:
    args: list[Any] = []
    for s in specs:
        args += _limit_args(s, lease_id)
    return args


_by_index = operator.itemgetter(0)  # sorts (index, LimitState) pairs


def _state(spec: LimitSpec, reply: Sequence[int], j: int, *, degraded: bool = False) -> LimitState:
    # _make: a named tuple from one tuple, without the keyword-handling constructor (one per limit per request)
    return LimitState._make(
        (
            spec.name,
            spec.kind,
            spec.unit,
            reply[j] == 1,
            reply[j + 1],
            reply[j + 2],
            reply[j + 3],
            reply[j + 4],
            spec.shadow,
            degraded,
        )
    )


def _divided(spec: LimitSpec, instances: int) -> LimitSpec:
    if instances <= 1 or spec.limit == 0:
        return spec
    return dataclasses.replace(spec, limit=max(1, spec.limit // instances))


class _Outcome:
    __slots__ = ("allowed", "states", "charges", "degraded")

    def __init__(
        self, allowed: bool, states: list[tuple[int, LimitState]], charges: list[Charge], degraded: bool
    ) -> None:
        self.allowed = allowed
        self.states = states
        self.charges = charges
        self.degraded = degraded


class _Group(NamedTuple):
    """One admit.lua call: its limits, KEYS, and ARGV with "" where each lease id goes."""

    items: list[_Item]
    keys: list[str]
    args: list[Any]
    lease_at: tuple[int, ...]

    @classmethod
    def of(cls, items: list[_Item]) -> _Group:
        keys = []
        args: list[Any] = []
        lease_at = []
        for it in items:
            keys.append(it.key)
            if it.args is None:  # a lease: its id is the 5th ARGV of the limit
                lease_at.append(len(args) + 4)
                args += _limit_args(it.spec, "")
            else:
                args += it.args
        return cls(items, keys, args, tuple(lease_at))

    def argv(self, lease_id: str) -> list[Any]:
        if not self.lease_at:
            return self.args  # shared: the engines never change ARGV
        args = self.args.copy()
        for i in self.lease_at:
            args[i] = lease_id
        return args


class _Layout(NamedTuple):
    """How one tuple of specs is admitted on a store kind: worked out once (admission reuses its spec tuples)."""

    specs: Sequence[LimitSpec]
    items: list[_Item]
    wants_lease: bool
    groups: list[_Group]


_LAYOUTS_LIMIT = 4_096  # a layout is about 1.5 KB; spec tuples vary with the token estimate


def _group_outcome(store: str, group: list[_Item], reply: Sequence[int], lease_id: str, every_charge: bool) -> _Outcome:
    """admit.lua's reply for one group: each limit's state and, when admitted, what settles or releases later
    (every charge when ``every_charge``: a later group's refusal refunds them)."""
    admitted = reply[0] == 1
    states = []
    charges = []
    j = 2  # this limit's 6 fields in the reply
    for it in group:
        spec = it.spec
        states.append((it.index, _state(spec, reply, j)))
        if admitted and spec.cost > 0 and (every_charge or spec.reserves or it.args is None):
            charges.append(Charge._make((store, it.key, it.tag, spec, reply[j + 5], lease_id)))
        j += _ADMIT_STRIDE
    return _Outcome(admitted, states, charges, False)


class Limiter:
    """Admits requests against limits held in one of several named stores.

    ``stores`` maps store names to engines; ``default_store`` is used when
    ``admit`` names none. ``local`` is the embedded engine used by limits in
    ``local`` fail mode, with each limit divided by ``instances``. The clock
    times the over-limit cache. ``plan_routes`` / ``tenant_routes`` map a
    plan or tenant to a store name (see :meth:`store_for`).
    """

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
        self._layouts: dict[tuple[int, bool], _Layout] = {}  # (id(specs), single slot) -> layout; holds the tuple too
        self._cache = OverLimitCache(cache_size)
        self._plan_routes = dict(plan_routes or {})
        self._tenant_routes = dict(tenant_routes or {})
        self.stats = LimiterStats()
        # (charge, delta) that settle.lua could not apply because the store was unreachable, per store
        self._unsettled: dict[str, deque[tuple[Charge, int]]] = {}
        self._replay_wake: asyncio.Event | None = None
        self._replayer: asyncio.Task[None] | None = None

    # -- routing -----------------------------------------------------------------
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

    # -- admission -----------------------------------------------------------------
    async def admit(self, specs: Sequence[LimitSpec], *, store: str | None = None) -> Decision:
        """Check and consume every limit, all or nothing.

        Limits are grouped by hash slot when the store needs it (Cluster):
        the tenant's group first, then the others; if a later group refuses,
        what the earlier groups consumed is refunded. On a standalone store
        they all go in one call.
        """
        self.stats.admissions += 1
        store_name = store or self.default_store
        engine = self._engine(store_name)
        if not specs:
            return Decision(True, ())
        single_slot = engine.single_slot
        layout = self._layouts.get((id(specs), single_slot))
        if layout is None or layout.specs is not specs:
            layout = self._layout(specs, single_slot)
        items = layout.items
        remote = engine.remote
        now = 0.0  # the over-limit cache's time; only remote stores use the cache
        if remote:
            now = self._clock.monotonic()
            cached = self._cached_refusal(store_name, items, now)
            if cached is not None:
                return cached
        lease_id = os.urandom(9).hex() if layout.wants_lease else ""

        states: list[tuple[int, LimitState]] = []
        consumed: list[Charge] = []
        degraded = False
        allowed = True
        groups = layout.groups
        # With one group nothing is ever refunded, so only what settles or releases later needs a Charge.
        every_charge = len(groups) > 1
        for group in groups:
            # The store call is awaited here rather than in a helper coroutine: one frame less to suspend and resume.
            pending = engine.run("admit", group.keys, group.argv(lease_id))
            try:
                reply = await pending
            except StoreOverloaded:  # the gateway's own queue, not the store: no fail mode, a 503
                if consumed:
                    await self._refund(consumed)
                raise
            except StoreError:
                outcome = await self._fail_group(store_name, group.items, lease_id)
            except asyncio.CancelledError:
                self._refund_abandoned(store_name, group, pending, lease_id, consumed)
                raise
            else:
                outcome = _group_outcome(store_name, group.items, reply, lease_id, every_charge)
            states += outcome.states
            degraded = degraded or outcome.degraded
            if not outcome.allowed:
                allowed = False
                if consumed:
                    self.stats.compensations += 1
                    await self._refund(consumed)
                    consumed = []
                break
            consumed += outcome.charges

        if len(groups) > 1 or degraded:  # a failed group lists its fail-mode answers before its local ones
            states.sort(key=_by_index)
        limits = tuple([s for _, s in states])
        if degraded:
            self.stats.degraded += 1
        elif remote and not allowed:
            for idx, st in states:
                if not st.allowed and not st.shadow:
                    it = items[idx]
                    self._cache.remember(store_name, it.key, it.spec.cost, st, now, reserved=it.spec.reserves)
        if not allowed:
            return Decision(False, limits, degraded, _retry_after(limits))
        reservation = tuple([c for c in consumed if c.spec.reserves])
        leases = tuple([c for c in consumed if c.spec.kind == "concurrency"])
        return Decision(
            True,
            limits,
            degraded,
            0,
            Reservation(reservation) if reservation else None,
            Lease(leases) if leases else None,
        )

    def _layout(self, specs: Sequence[LimitSpec], single_slot: bool) -> _Layout:
        items = []
        for i, spec in enumerate(specs):
            key, tag = self._keys.key_and_tag(spec)  # remembered by the key builder
            items.append(_Item(i, spec, key, tag, None if spec.kind == "concurrency" else _limit_args(spec, "")))
        groups = [_Group.of(g) for g in self._groups(items, single_slot)]
        layout = _Layout(specs, items, any(it.args is None for it in items), groups)
        if isinstance(specs, tuple):  # a list could change after this call: only tuples are remembered
            if len(self._layouts) >= _LAYOUTS_LIMIT:
                self._layouts.clear()
            self._layouts[(id(specs), single_slot)] = layout
        return layout

    def _cached_refusal(self, store: str, items: list[_Item], now: float) -> Decision | None:
        for it in items:
            if it.spec.shadow or it.spec.kind == "concurrency":
                continue
            state = self._cache.lookup(store, it.key, it.spec.cost, now)
            if state is not None:
                self.stats.cache_hits += 1
                return Decision(False, (state,), False, state.retry_after_ms, cached=True)
        return None

    @staticmethod
    def _groups(items: list[_Item], single_slot: bool) -> list[list[_Item]]:
        if not single_slot:
            return [items]
        by_tag: dict[str, list[_Item]] = {}
        for it in items:
            by_tag.setdefault(it.tag, []).append(it)
        # the tenant's own limits first: they are the ones most likely to refuse
        return sorted(by_tag.values(), key=lambda g: not g[0].tag.startswith("t."))

    async def _fail_group(self, store: str, group: list[_Item], lease_id: str) -> _Outcome:
        """The store failed: each limit's fail mode answers, ``local`` ones on the embedded engine together."""
        states: list[tuple[int, LimitState]] = []
        local: list[_Item] = []
        refused = False
        for it in group:
            spec = it.spec
            if spec.fail_mode == "local" and self._local is not None:
                local.append(it)
            elif spec.fail_mode == "fail_closed" and not spec.shadow:
                refused = True
                states.append(
                    (
                        it.index,
                        LimitState(
                            spec.name,
                            spec.kind,
                            spec.unit,
                            False,
                            spec.limit,
                            0,
                            FAIL_CLOSED_RETRY_MS,
                            FAIL_CLOSED_RETRY_MS,
                            spec.shadow,
                            True,
                        ),
                    )
                )
            else:  # fail_open, or a shadow limit, or no embedded engine to fall back on
                states.append(
                    (
                        it.index,
                        LimitState(
                            spec.name,
                            spec.kind,
                            spec.unit,
                            True,
                            spec.limit,
                            spec.limit,
                            0,
                            0,
                            spec.shadow,
                            True,
                        ),
                    )
                )
        if refused or not local:  # a fail_closed refusal: the local limits are not even consumed
            return _Outcome(not refused, states, [], True)
        assert self._local is not None
        specs = [_divided(it.spec, self._instances) for it in local]
        keys = [f"{it.key}@{store}" for it in local]
        reply = await self._local.run("admit", keys, _args(specs, lease_id))
        admitted = reply[0] == 1
        charges = []
        for n, (it, spec) in enumerate(zip(local, specs)):
            j = 2 + n * _ADMIT_STRIDE
            states.append((it.index, _state(spec, reply, j, degraded=True)))
            if admitted and spec.cost > 0:
                charges.append(Charge(LOCAL_STORE, keys[n], it.tag, spec, reply[j + 5], lease_id))
        return _Outcome(admitted, states, charges, True)

    # -- refunds, settling, leases ---------------------------------------------------
    def _by_call(self, charges: Sequence[Charge]) -> list[tuple[ScriptEngine, list[Charge]]]:
        """Charges grouped into calls: one per store, and per hash tag where the store needs it."""
        calls: dict[tuple[str, str], list[Charge]] = {}
        for c in charges:
            engine = self._engine(c.store)
            calls.setdefault((c.store, c.tag if engine.single_slot else ""), []).append(c)
        return [(self._engine(store), group) for (store, _), group in calls.items()]

    async def _settle_calls(self, deltas: Sequence[tuple[Charge, int]]) -> tuple[list[SettledLimit], bool]:
        """Run settle.lua for (charge, delta) pairs; returns what was settled and whether a store failed
        (what an unreachable store did not get is kept for :meth:`replay`)."""
        if len(self._cache):
            for c, d in deltas:
                if d < 0:
                    self._cache.forget(c.store, c.key)
        calls: dict[tuple[str, str], list[tuple[Charge, int]]] = {}
        for pair in deltas:
            c = pair[0]
            calls.setdefault((c.store, c.tag if self._engine(c.store).single_slot else ""), []).append(pair)
        done: list[SettledLimit] = []
        degraded = False
        for (store, _), group in calls.items():
            for start in range(0, len(group), FINISH_BATCH):
                chunk = group[start : start + FINISH_BATCH]
                args: list[Any] = []
                for c, delta in chunk:
                    s = c.spec
                    args += (s.kind, s.limit, s.window_ms, delta, _param(s, c.lease_id), c.mark)
                try:
                    reply = await self._engine(store).run("settle", [c.key for c, _ in chunk], args)
                except StoreError as exc:
                    degraded = True
                    self._keep_unsettled(store, chunk, exc)
                    continue
                for n, (c, _) in enumerate(chunk):
                    j = 1 + n * 4
                    done.append(SettledLimit(c.spec.name, reply[j], reply[j + 1], reply[j + 2], reply[j + 3]))
        return done, degraded

    def _keep_unsettled(self, store: str, pairs: Sequence[tuple[Charge, int]], exc: StoreError) -> None:
        """Keep (charge, delta) pairs a store did not get, to apply them when it answers again.

        Only when the call is known not to have reached the store: one that
        timed out after it was written may still be applied there, and
        applying it twice would be worse than leaving it to its TTL.
        """
        if not isinstance(exc, StoreUnavailable) or store == LOCAL_STORE:
            return
        kept = self._unsettled.get(store)
        if kept is None:
            kept = self._unsettled[store] = deque(maxlen=UNSETTLED_LIMIT)
        overflow = len(kept) + len(pairs) - UNSETTLED_LIMIT
        if overflow > 0:
            self.stats.unsettled_dropped += min(overflow, len(kept) + len(pairs))
        kept.extend(pairs)
        if self._replay_wake is not None:
            self._replay_wake.set()

    @property
    def unsettled(self) -> int:
        """Settle charges and lease releases waiting for their store to answer again."""
        return sum(len(kept) for kept in self._unsettled.values())

    async def replay(self) -> int:
        """Apply the kept settle charges and lease releases; those whose store is still unreachable stay kept.
        Returns how many were applied."""
        pairs: list[tuple[Charge, int]] = []
        for kept in self._unsettled.values():
            pairs += kept
            kept.clear()
        if not pairs:
            return 0
        before = self.unsettled
        await self._settle_calls(pairs)
        applied = len(pairs) - (self.unsettled - before)
        self.stats.replayed += applied
        return applied

    async def _replay_loop(self) -> None:
        wake = self._replay_wake
        assert wake is not None
        while True:
            await wake.wait()
            await asyncio.sleep(REPLAY_INTERVAL)
            wake.clear()
            await self.replay()
            if self._unsettled and any(self._unsettled.values()):
                wake.set()

    async def _refund(self, consumed: Sequence[Charge]) -> None:
        """Undo an admission that a later group refused (a lease is released)."""
        await self._settle_calls([(c, -c.spec.cost) for c in consumed])

    async def settle(self, reservation: Reservation, actual_cost: Actual) -> Settlement:
        """Charge or refund ``actual - reserved`` on every reserved limit; once (later calls return the first result).

        ``actual_cost`` is one amount for every limit, or a :class:`Consumed` from
        which each limit takes the amount of its unit (tokens, input or output
        tokens, money).

        A charge goes through even past the limit (the tokens were used) and
        is reported as overdraft; later requests then wait until the budget
        recovers. ``Settlement.limits`` lists the limits whose counters moved
        (none when the estimate was exact). Store errors are not raised: the
        settlement says degraded and those limits are left as reserved.
        """
        if reservation.settlement is not None:
            return reservation.settlement
        deltas = []
        for c in reservation.charges:
            actual = _actual(actual_cost, c.spec.unit)
            if actual < 0:
                raise ValueError("actual_cost must be >= 0")
            if actual != c.spec.cost:
                deltas.append((c, actual - c.spec.cost))
        reservation.settlement = await self.adjust(deltas)
        return reservation.settlement

    async def adjust(self, deltas: Sequence[tuple[Charge, int]]) -> Settlement:
        """Charge (delta > 0, even past the limit) or refund (delta < 0) each charge's place; store errors
        are not raised: the settlement says degraded."""
        done, degraded = await self._settle_calls(deltas) if deltas else ([], False)
        return Settlement(tuple(done), degraded)

    async def finish_many(self, items: Sequence[Finished]) -> list[tuple[Settlement | None, bool]]:
        """Settle the reservations and release the leases of many finished requests in as few calls as possible.

        Every charge of the batch goes into one ``settle.lua`` call per store (per
        hash slot where the store needs it, at most ``FINISH_BATCH`` charges each):
        a token charge with ``actual - reserved``, a lease with a refund of its one
        unit, which is how concurrency's ``adjust`` gives a lease back. Returns, per
        item, its settlement (None without a reservation; an already settled one is
        returned as it was) and whether its lease was released (False when a store
        failed: the lease is released when the store answers again if the call
        never reached it, else it expires by TTL). Store errors are not raised.
        """
        entries: list[tuple[int, Charge, int]] = []
        for n, (reservation, actual, lease) in enumerate(items):
            if reservation is not None and reservation.settlement is None:
                plain = type(actual) is int
                for c in reservation.charges:
                    used = actual if plain else getattr(actual, c.spec.unit)
                    if used < 0:
                        raise ValueError("actual_cost must be >= 0")
                    if used != c.spec.cost:
                        entries.append((n, c, used - c.spec.cost))
            if lease is not None and not lease.released:
                lease.released = True
                for c in lease.charges:
                    entries.append((n, c, -1))
        settled: list[list[SettledLimit]] = [[] for _ in items]
        failed = [False] * len(items)  # a token charge of the item was not settled
        kept = [False] * len(items)  # a lease of the item was not released
        calls: dict[tuple[str, str], list[tuple[int, Charge, int]]] = {}
        forget = self._cache.forget if len(self._cache) else None  # refunds may end a remembered refusal
        for entry in entries:
            c = entry[1]
            if forget is not None and entry[2] < 0:
                forget(c.store, c.key)
            calls.setdefault((c.store, c.tag if self._engine(c.store).single_slot else ""), []).append(entry)
        for (store, _), group in calls.items():
            engine = self._engine(store)
            for start in range(0, len(group), FINISH_BATCH):
                chunk = group[start : start + FINISH_BATCH]
                args: list[Any] = []
                for _, c, delta in chunk:
                    sp = c.spec
                    args += (sp.kind, sp.limit, sp.window_ms, delta, _param(sp, c.lease_id), c.mark)
                try:
                    reply = await engine.run("settle", [c.key for _, c, _ in chunk], args)
                except StoreError as exc:
                    self._keep_unsettled(store, [(c, delta) for _, c, delta in chunk], exc)
                    for n, c, _ in chunk:
                        if c.spec.kind == "concurrency":
                            kept[n] = True
                        else:
                            failed[n] = True
                    continue
                j = 1
                for n, c, _ in chunk:
                    if c.spec.kind != "concurrency":
                        settled[n].append(SettledLimit(c.spec.name, reply[j], reply[j + 1], reply[j + 2], reply[j + 3]))
                    j += 4
        out: list[tuple[Settlement | None, bool]] = []
        for n, (reservation, _, lease) in enumerate(items):
            settlement = None
            if reservation is not None:
                if reservation.settlement is None:
                    reservation.settlement = Settlement(tuple(settled[n]), failed[n])
                settlement = reservation.settlement
            out.append((settlement, lease is not None and not kept[n]))
        return out

    async def renew(self, lease: Lease, ttl_ms: int | None = None) -> bool:
        """Extend the leases; False if any had expired or been released. Raises StoreError if a store fails."""
        if lease.released:
            return False
        ttl = ttl_ms if ttl_ms is not None else lease.ttl_ms
        held = True
        for engine, group in self._by_call(lease.charges):
            reply = await engine.run("lease_renew", [c.key for c in group], [ttl, *(c.lease_id for c in group)])
            held = held and all(r == 1 for r in reply)
        return held

    async def release(self, lease: Lease) -> bool:
        """Give the leases back; idempotent. False if already released or a store failed (released when it
        answers again if the call never reached it, else the TTL frees them)."""
        if lease.released:
            return False
        lease.released = True
        ok = True
        for engine, group in self._by_call(lease.charges):
            try:
                await engine.run("lease_release", [c.key for c in group], [c.lease_id for c in group])
            except StoreError as exc:
                ok = False
                self._keep_unsettled(group[0].store, [(c, -1) for c in group], exc)  # settle -1: a lease given back
        return ok

    # -- a running request's reservation grows ---------------------------------------------
    async def extend(self, wants: Sequence[tuple[LimitSpec, int, int]], *, store: str | None = None) -> Extension:
        """Reserve more on limits a request already holds: ``(spec, want, need)`` each, granted on its own.

        A limit grants ``want`` when it fits, else what it has left when that is
        at least ``need``, else nothing (and is not written). When the store
        fails, each limit's fail mode answers: ``fail_open`` grants ``want``
        unchecked, ``fail_closed`` nothing, ``local`` asks the embedded engine
        with the limit divided among the instances.
        """
        store_name = store or self.default_store
        engine = self._engine(store_name)
        items = []
        for i, (spec, want, need) in enumerate(wants):
            key, tag = self._keys.key_and_tag(spec)
            items.append((i, spec, key, tag, want, need))
        by_tag: dict[str, list[tuple[int, LimitSpec, str, str, int, int]]] = {}
        for it in items:
            by_tag.setdefault(it[3] if engine.single_slot else "", []).append(it)
        granted = [0] * len(items)
        charges: list[Charge] = []
        degraded = False
        for group in by_tag.values():
            try:
                reply = await engine.run("extend", [it[2] for it in group], _extend_args(group))
            except StoreOverloaded:  # the gateway's own queue: the caller decides, no fail mode
                raise
            except StoreError:
                degraded = True
                charges += await self._fail_extend(store_name, group, granted)
                continue
            for n, (i, spec, key, tag, _, _) in enumerate(group):
                j = 1 + n * _EXTEND_STRIDE
                if reply[j] > 0:
                    granted[i] = reply[j]
                    charges.append(Charge(store_name, key, tag, spec.with_cost(reply[j]), reply[j + 2]))
        return Extension(tuple(granted), Reservation(tuple(charges)) if charges else None, degraded)

    async def _fail_extend(
        self, store: str, group: list[tuple[int, LimitSpec, str, str, int, int]], granted: list[int]
    ) -> list[Charge]:
        local = []
        for it in group:
            i, spec, _, _, want, _ = it
            if spec.fail_mode == "local" and self._local is not None:
                local.append(it)
            elif spec.fail_mode != "fail_closed":
                granted[i] = want  # fail_open: unchecked, as an admission would be
        if not local:
            return []
        assert self._local is not None
        divided = [
            (i, _divided(spec, self._instances), f"{key}@{store}", tag, want, need)
            for i, spec, key, tag, want, need in local
        ]
        reply = await self._local.run("extend", [it[2] for it in divided], _extend_args(divided))
        charges = []
        for n, (i, spec, key, tag, _, _) in enumerate(divided):
            j = 1 + n * _EXTEND_STRIDE
            if reply[j] > 0:
                granted[i] = reply[j]
                charges.append(Charge(LOCAL_STORE, key, tag, spec.with_cost(reply[j]), reply[j + 2]))
        return charges

    # -- reading -------------------------------------------------------------------------
    async def peek(self, spec: LimitSpec, *, store: str | None = None) -> LimitState:
        """The current state of a limit without consuming anything; raises StoreError if the store fails."""
        return (await self.counter(spec, store=store))[0]

    async def counter(self, spec: LimitSpec, *, store: str | None = None) -> tuple[LimitState, int]:
        """A limit's state and the units it counts now (past the limit after an overdraft); raises StoreError."""
        key = self._keys.key(spec)
        reply = await self._engine(store or self.default_store).run("peek", [key], _args([spec], ""))
        return _state(spec, reply, 2), reply[8]

    def _refund_abandoned(self, store: str, group: _Group, pending: Any, lease_id: str, consumed: list[Charge]) -> None:
        """The caller was cancelled (a client that left) while its admission ran: give back, in the background,
        what earlier groups consumed and, when the script had already run, what this group consumed."""
        charges = list(consumed)
        if asyncio.isfuture(pending) and pending.done() and not pending.cancelled() and pending.exception() is None:
            charges += _group_outcome(store, group.items, pending.result(), lease_id, True).charges
        if charges:
            task = asyncio.get_running_loop().create_task(self._refund(charges))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        """Open each store's connections (see the engines' ``start``) and start replaying what they missed."""
        for engine in self._stores.values():
            await engine.start()
        if self._replayer is None:
            self._replay_wake = asyncio.Event()
            if self.unsettled:
                self._replay_wake.set()
            self._replayer = asyncio.get_running_loop().create_task(self._replay_loop())

    async def close(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
            self._replayer = self._replay_wake = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.unsettled:
            await self.replay()  # a last try: the store may answer again by now
        for engine in self._stores.values():
            await engine.close()
        if self._local is not None:
            await self._local.close()


def _extend_args(group: Sequence[tuple[int, LimitSpec, str, str, int, int]]) -> list[Any]:
    """extend.lua's 6 ARGV per limit: kind, limit, window, want, param, need."""
    args: list[Any] = []
    for _, spec, _, _, want, need in group:
        args += (spec.kind, spec.limit, spec.window_ms, want, _param(spec, ""), max(1, min(need, want)))
    return args


def _retry_after(limits: Sequence[LimitState]) -> int:
    waits = [s.retry_after_ms for s in limits if not s.allowed and not s.shadow]
    if not waits:
        return 0
    return -1 if -1 in waits else max(waits)
