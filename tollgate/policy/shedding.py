"""Load shedding: when the gateway itself is overloaded, refuse the lowest priorities first, keep a share for the top.

Pressure is the larger of (other requests in flight / ``max_inflight``) and
(event-loop lag / ``loop_lag``); 1.0 means full. A request of priority ``p``
is refused when the pressure reaches its threshold: 1.0 for ``p >=
top_priority``, and ``(1 - reserved_share) * (p + 1) / top_priority`` below
it, so the lowest class goes first and the top class always keeps
``reserved_share`` of the capacity to itself. Refusals are 503 with
``Retry-After`` and counted per priority in :attr:`Shedder.shed`.

:meth:`Shedder.enter` / :meth:`Shedder.leave` run at the very start and end of
the handler (the in-flight count; a request that even the top class could not
get is refused there, before any work); :meth:`Shedder.admit` runs before
routing, once the plan has set the request's priority.
"""

from __future__ import annotations

import asyncio
import logging
import math

from tollgate.background import BackgroundTask
from tollgate.config.resilience import SheddingPolicy
from tollgate.errors import Overloaded

__all__ = ["Shedder"]

log = logging.getLogger("tollgate.shedding")


class Shedder:
    __slots__ = ("policy", "inflight", "lag", "shed", "_retry_after", "_lag_watch", "_enabled")

    def __init__(self, policy: SheddingPolicy) -> None:
        self.inflight = 0
        self.lag = 0.0  # the latest event-loop lag sample, seconds
        self.shed: dict[int, int] = {}  # priority -> requests refused
        self._lag_watch = BackgroundTask("tollgate-loop-lag", self._watch_lag)
        self.policy = policy
        self._enabled = policy.enabled
        self._retry_after = str(max(1, math.ceil(policy.retry_after)))

    def configure(self, policy: SheddingPolicy) -> None:
        self.policy = policy
        self._enabled = policy.enabled
        self._retry_after = str(max(1, math.ceil(policy.retry_after)))
        if not policy.loop_lag:
            self.lag = 0.0

    def pressure(self) -> float:
        policy = self.policy
        p = (self.inflight - 1) / policy.max_inflight if policy.max_inflight else 0.0
        if policy.loop_lag and self.lag / policy.loop_lag > p:
            p = self.lag / policy.loop_lag
        return p

    def threshold(self, priority: int) -> float:
        policy = self.policy
        if priority >= policy.top_priority:
            return 1.0
        return (1.0 - policy.reserved_share) * (max(priority, 0) + 1) / policy.top_priority

    def enter(self) -> None:
        """Count a request in; refuse it when even the top priority would be refused."""
        self.inflight += 1
        if self._enabled and self.pressure() >= 1.0:
            self._refuse(self.policy.top_priority)

    def leave(self) -> None:
        self.inflight -= 1

    def admit(self, priority: int) -> None:
        """Refuse a request of this priority if the pressure has reached its threshold."""
        if self._enabled and self.pressure() >= self.threshold(priority):
            self._refuse(priority)

    def _refuse(self, priority: int) -> None:
        self.shed[priority] = self.shed.get(priority, 0) + 1
        raise Overloaded(
            "the gateway is overloaded; retry shortly",
            code="gateway_overloaded",
            headers={"Retry-After": self._retry_after},
        )

    # -- event-loop lag -------------------------------------------------------
    def start(self) -> None:
        self._lag_watch.start()

    async def close(self) -> None:
        await self._lag_watch.stop()

    async def _watch_lag(self) -> None:
        # The real event loop's time, never an injected clock: this measures the loop itself.
        loop = asyncio.get_running_loop()
        while True:
            interval = self.policy.lag_interval
            if not self.policy.loop_lag:
                await asyncio.sleep(1.0)
                continue
            before = loop.time()
            await asyncio.sleep(interval)
            lag = loop.time() - before - interval
            lagging = self.lag >= self.policy.loop_lag
            self.lag = lag if lag > 0 else 0.0
            if (self.lag >= self.policy.loop_lag) != lagging:  # log crossings, not every sample
                log.warning(
                    "event-loop lag %.0f ms %s the %.0f ms threshold",
                    self.lag * 1000,
                    "over" if not lagging else "back under",
                    self.policy.loop_lag * 1000,
                )
