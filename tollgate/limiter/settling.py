"""A reservation's life after admission: grow it while the request runs, settle it to what was used, adjust it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tollgate.errors import StoreError, StoreOverloaded
from tollgate.limiter.admitting import AdmitMixin
from tollgate.limiter.decision import (
    Charge,
    Consumed,
    Extension,
    Lease,
    Reservation,
    SettledLimit,
    Settlement,
)
from tollgate.limiter.script_args import EXTEND_STRIDE, SETTLE_STRIDE, ExtendItem, extend_args, settle_limit
from tollgate.limiter.spec import LimitSpec
from tollgate.limiter.unsettled import FINISH_BATCH

__all__ = ["Actual", "Finished", "SettleMixin"]

# What a request really used: one amount for every limit of its reservation, or one per unit.
Actual = int | Consumed
# One finished request for Limiter.finish_many: its reservation, what it really used, its lease.
Finished = tuple[Reservation | None, Actual, Lease | None]


# Limits whose settle.lua text a limiter keeps (a spec and its text, about 300 bytes); specs vary with the estimate.
SETTLE_LIMITS_KEPT = 16_384

_new = tuple.__new__  # a named tuple without its Python-level constructor (several per settled batch entry)


def _actual(actual: Actual, unit: str) -> int:
    return actual if type(actual) is int else getattr(actual, unit)


class SettleMixin(AdmitMixin):
    """settle, adjust, finish_many and extend."""

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
        append = entries.append
        for n, (reservation, actual, lease) in enumerate(items):
            if reservation is not None and reservation.settlement is None:
                amount = actual if type(actual) is int else None
                for c in reservation.charges:
                    cost = c.spec.cost
                    used = amount if amount is not None else getattr(actual, c.spec.unit)
                    if used < 0:
                        raise ValueError("actual_cost must be >= 0")
                    if used != cost:
                        append((n, c, used - cost))
            if lease is not None and not lease.released:
                lease.released = True
                for c in lease.charges:
                    append((n, c, -1))
        settled: dict[int, list[SettledLimit]] = {}  # per item with a token charge settled
        failed: set[int] = set()  # items a token charge of which was not settled
        kept: set[int] = set()  # items a lease of which was not released
        calls: dict[tuple[str, str], list[tuple[int, Charge, int]]] = {}
        forget = self._cache.forget if len(self._cache) else None  # refunds may end a remembered refusal
        single_slot: dict[str, bool] = {}  # per store: grouped by hash slot (Cluster)
        for entry in entries:
            c = entry[1]
            store = c.store
            if forget is not None and entry[2] < 0:
                forget(store, c.key)
            by_slot = single_slot.get(store)
            if by_slot is None:
                by_slot = single_slot[store] = self._engine(store).single_slot
            group = calls.get((store, c.tag if by_slot else ""))
            if group is None:
                group = calls[(store, c.tag if by_slot else "")] = []
            group.append(entry)
        packed = self._settle_limits
        for (store, _), group in calls.items():
            engine = self._engine(store)
            for start in range(0, len(group), FINISH_BATCH):
                chunk = group[start : start + FINISH_BATCH]
                args: list[Any] = []
                for _, c, delta in chunk:
                    # settle_args(c.spec, delta, c.mark, c.lease_id), the limit's packed text made once per spec
                    spec = c.spec
                    known = packed.get(id(spec))
                    if known is None or known[0] is not spec:
                        known = self._packed_settle(spec)
                    args += (known[1], delta, c.lease_id if spec.kind == "concurrency" else c.mark)
                try:
                    reply = await engine.run("settle", [c.key for _, c, _ in chunk], args)
                except StoreError as exc:
                    self._keep_unsettled(store, [(c, delta) for _, c, delta in chunk], exc)
                    for n, c, _ in chunk:
                        if c.spec.kind == "concurrency":
                            kept.add(n)
                        else:
                            failed.add(n)
                    continue
                j = 1
                for n, c, _ in chunk:
                    if c.spec.kind == "concurrency":
                        j += 1  # a release: what it released, nothing else
                        continue
                    done = _new(SettledLimit, (c.spec.name, reply[j], reply[j + 1], reply[j + 2], reply[j + 3]))
                    mine = settled.get(n)
                    if mine is None:
                        settled[n] = [done]
                    else:
                        mine.append(done)
                    j += SETTLE_STRIDE
        out: list[tuple[Settlement | None, bool]] = []
        for n, (reservation, _, lease) in enumerate(items):
            settlement = None
            if reservation is not None:
                settlement = reservation.settlement
                if settlement is None:
                    mine = settled.get(n)
                    settlement = reservation.settlement = _new(Settlement, (tuple(mine) if mine else (), n in failed))
            out.append((settlement, lease is not None and n not in kept))
        return out

    def _packed_settle(self, spec: LimitSpec) -> tuple[LimitSpec, str]:
        """A limit as settle.lua's first packed ARGV, remembered by the spec's identity (the spec is kept with it)."""
        if len(self._settle_limits) >= SETTLE_LIMITS_KEPT:
            self._settle_limits.clear()
        known = self._settle_limits[id(spec)] = (spec, settle_limit(spec))
        return known

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
        by_tag: dict[str, list[ExtendItem]] = {}
        for it in items:
            by_tag.setdefault(it[3] if engine.single_slot else "", []).append(it)
        granted = [0] * len(items)
        charges: list[Charge] = []
        degraded = False
        for group in by_tag.values():
            try:
                reply = await engine.run("extend", [it[2] for it in group], extend_args(group))
            except StoreOverloaded:  # the gateway's own queue: the caller decides, no fail mode
                raise
            except StoreError:
                degraded = True
                charges += await self._fail_extend(store_name, group, granted)
                continue
            for n, (i, spec, key, tag, _, _) in enumerate(group):
                j = 1 + n * EXTEND_STRIDE
                if reply[j] > 0:
                    granted[i] = reply[j]
                    charges.append(_new(Charge, (store_name, key, tag, spec.with_cost(reply[j]), reply[j + 2], "")))
        return _new(Extension, (tuple(granted), Reservation(tuple(charges)) if charges else None, degraded))
