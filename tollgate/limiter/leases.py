"""Concurrency leases after admission: renewed while a request runs, released (idempotently) when it ends."""

from __future__ import annotations

from collections.abc import Sequence

from tollgate.errors import StoreError
from tollgate.limiter.decision import Charge, Lease
from tollgate.limiter.store.engine import ScriptEngine
from tollgate.limiter.unsettled import UnsettledMixin

__all__ = ["LeaseMixin"]


class LeaseMixin(UnsettledMixin):
    """renew and release."""

    def _by_call(self, charges: Sequence[Charge]) -> list[tuple[ScriptEngine, list[Charge]]]:
        """Charges grouped into calls: one per store, and per hash tag where the store needs it."""
        calls: dict[tuple[str, str], list[Charge]] = {}
        for c in charges:
            engine = self._engine(c.store)
            calls.setdefault((c.store, c.tag if engine.single_slot else ""), []).append(c)
        return [(self._engine(store), group) for (store, _), group in calls.items()]

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
