"""Concurrency leases after admission: renewed while a request runs, released (idempotently) when it ends."""

from __future__ import annotations

from collections.abc import Sequence

from tollgate.limiter.decision import Charge, Lease
from tollgate.limiter.settling import SettleMixin
from tollgate.limiter.store.engine import ScriptEngine

__all__ = ["LeaseMixin"]


class LeaseMixin(SettleMixin):
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
        # settle.lua gives a lease back with a refund of its one unit, as finish_many does: a ZREM per lease,
        # where lease_release.lua also reads the lease's score and sweeps the expired ones (7 commands for two
        # leases instead of 3); expired leases are swept by the next admission or leave with the key's TTL.
        _, degraded = await self._settle_calls([(c, -1) for c in lease.charges])
        return not degraded
