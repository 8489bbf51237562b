"""settle.lua calls, and what an unreachable store missed: kept, and applied when it answers again.

Settlements, refunds and lease releases that could not reach their store
(:class:`StoreUnavailable`: circuit open, no connection) are kept per store,
at most ``UNSETTLED_LIMIT`` (the oldest go first), and tried again every
``REPLAY_INTERVAL`` once the limiter is started.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

from tollgate.errors import StoreError, StoreUnavailable
from tollgate.limiter.base import LOCAL_STORE, LimiterBase
from tollgate.limiter.decision import Charge, SettledLimit
from tollgate.limiter.script_args import SETTLE_STRIDE, settle_args

__all__ = ["FINISH_BATCH", "REPLAY_INTERVAL", "UNSETTLED_LIMIT", "UnsettledMixin"]

# Charges per settle.lua call when finishing a batch of requests (keeps one script call short on Redis).
FINISH_BATCH = 256
# Settle charges and lease releases kept per store while it cannot be reached (the oldest go first past it),
# and how often they are tried again.
UNSETTLED_LIMIT = 10_000
REPLAY_INTERVAL = 0.1


class UnsettledMixin(LimiterBase):
    """Runs settle.lua for (charge, delta) pairs and keeps what an unreachable store did not get."""

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
                    args += settle_args(c.spec, delta, c.mark, c.lease_id)
                try:
                    reply = await self._engine(store).run("settle", [c.key for c, _ in chunk], args)
                except StoreError as exc:
                    degraded = True
                    self._keep_unsettled(store, chunk, exc)
                    continue
                j = 1
                for c, _ in chunk:
                    if c.spec.kind == "concurrency":  # a release: settle.lua reports what it released alone
                        done.append(SettledLimit(c.spec.name, reply[j], 0, 0, 0))
                        j += 1
                    else:
                        done.append(SettledLimit(c.spec.name, reply[j], reply[j + 1], reply[j + 2], reply[j + 3]))
                        j += SETTLE_STRIDE
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
