"""All-or-nothing admission: a request's limits checked and consumed in one admit.lua call per hash slot."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Iterable, Sequence
from random import getrandbits
from typing import Any

from tollgate.errors import StoreError, StoreOverloaded
from tollgate.limiter.decision import Charge, Decision, Lease, LimitState, Reservation
from tollgate.limiter.fail_modes import FailModeMixin
from tollgate.limiter.slot_groups import (
    LAYOUTS_LIMIT,
    Group,
    Item,
    Layout,
    alone,
    group_outcome,
    layout_of,
    retry_after,
)
from tollgate.limiter.spec import LimitSpec

__all__ = ["AdmitMixin"]

_by_position = operator.itemgetter(0)  # sorts (position, LimitState) pairs
_new = tuple.__new__


class AdmitMixin(FailModeMixin):
    """admit."""

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
            cached = self._cached_refusal(store_name, items, now) if len(self._cache) else None
            if cached is not None:
                return cached
        # 72 random bits from the process's generator (reseeded in a forked worker): os.urandom releases the GIL for
        # its getrandom system call, and under load the thread waited on getting it back, 5 % of a full-policy request.
        lease_id = getrandbits(72).to_bytes(9, "big").hex() if layout.wants_lease else ""

        groups = layout.groups
        if len(groups) == 1:  # every limit in one call (a standalone store, or one slot): read its reply at once
            group = groups[0]
            pending = engine.run("admit", group.keys, group.argv(lease_id))
            try:
                reply = await pending
            except StoreOverloaded:  # the gateway's own queue, not the store: no fail mode, a 503
                raise
            except StoreError:
                outcome = await self._fail_group(store_name, group.items, lease_id)
                return self._decided(
                    store_name, items, now, remote, outcome.states, outcome.charges, outcome.allowed, outcome.degraded
                )
            except asyncio.CancelledError:
                self._refund_abandoned(store_name, group, pending, lease_id, [])
                raise
            decision = alone(store_name, group, reply, lease_id)
            if remote and not decision.allowed:
                self._remember(store_name, items, enumerate(decision.limits), now)
            return decision

        states: list[tuple[int, LimitState]] = []
        consumed: list[Charge] = []
        degraded = False
        allowed = True
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
                outcome = group_outcome(store_name, group.items, reply, lease_id, True)
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

        return self._decided(store_name, items, now, remote, states, consumed, allowed, degraded)

    def _decided(
        self,
        store: str,
        items: list[Item],
        now: float,
        remote: bool,
        states: list[tuple[int, LimitState]],
        consumed: list[Charge],
        allowed: bool,
        degraded: bool,
    ) -> Decision:
        """The decision of the outcomes of several calls, or of a call whose store failed."""
        states.sort(key=_by_position)  # several groups, or a failed group's fail-mode answers before its local ones
        limits = tuple([s for _, s in states])
        if degraded:
            self.stats.degraded += 1
        elif remote and not allowed:
            self._remember(store, items, states, now)
        if not allowed:
            return Decision(False, limits, degraded, retry_after(limits))
        reservation = tuple([c for c in consumed if c.spec.reserves])
        leases = tuple([c for c in consumed if c.spec.kind == "concurrency"])
        return Decision(
            True,
            limits,
            degraded,
            0,
            Reservation(reservation) if reservation else None,
            Lease(leases) if leases else None,
            False,
        )

    def _remember(self, store: str, items: list[Item], states: Iterable[tuple[int, LimitState]], now: float) -> None:
        """A remote store refused: the limits that refused are over until their retry time (the over-limit cache)."""
        for idx, st in states:
            if not st.allowed and not st.shadow:
                it = items[idx]
                self._cache.remember(store, it.key, it.spec.cost, st, now, reserved=it.spec.reserves)

    def _layout(self, specs: Sequence[LimitSpec], single_slot: bool) -> Layout:
        layout = layout_of(specs, single_slot, self._keys)
        if isinstance(specs, tuple):  # a list could change after this call: only tuples are remembered
            if len(self._layouts) >= LAYOUTS_LIMIT:
                self._layouts.clear()
            self._layouts[(id(specs), single_slot)] = layout
        return layout

    def _cached_refusal(self, store: str, items: list[Item], now: float) -> Decision | None:
        for it in items:
            if it.spec.shadow or it.spec.kind == "concurrency":
                continue
            state = self._cache.lookup(store, it.key, it.spec.cost, now)
            if state is not None:
                self.stats.cache_hits += 1
                return Decision(False, (state,), False, state.retry_after_ms, cached=True)
        return None

    def _refund_abandoned(self, store: str, group: Group, pending: Any, lease_id: str, consumed: list[Charge]) -> None:
        """The caller was cancelled (a client that left) while its admission ran: give back, in the background,
        what earlier groups consumed and, when the script had already run, what this group consumed."""
        charges = list(consumed)
        if asyncio.isfuture(pending) and pending.done() and not pending.cancelled() and pending.exception() is None:
            charges += group_outcome(store, group.items, pending.result(), lease_id, True).charges
        if charges:
            task = asyncio.get_running_loop().create_task(self._refund(charges))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
