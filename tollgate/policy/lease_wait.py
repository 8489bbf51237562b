"""Waiting for a concurrency lease instead of refusing at once, where a connection_limit rule allows it.

A lease may be given back by any gateway process, so a waiter retries its
admission when this process releases one (woken at once) and otherwise
every ``poll`` seconds, until its deadline. Bounded: past ``size`` waiters
in this process a request is refused straight away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from tollgate.clock import Clock, SystemClock
from tollgate.limiter import Decision

__all__ = ["LeaseWaiters"]


class LeaseWaiters:
    __slots__ = ("size", "poll", "clock", "waiting", "served", "expired", "refused_full", "_released")

    def __init__(self, size: int = 1000, poll: float = 0.05, clock: Clock | None = None) -> None:
        self.size = size
        self.clock = clock or SystemClock()  # the loop time of the waiters' deadlines
        self.poll = poll
        self.waiting = 0
        self.served = 0
        self.expired = 0
        self.refused_full = 0
        self._released = asyncio.Event()

    def released(self) -> None:
        """A lease came back in this process: wake every waiter to try again (none waiting: nothing to do, which
        spares an event per released lease on the usual path)."""
        if not self.waiting:
            return
        event, self._released = self._released, asyncio.Event()
        event.set()

    async def retry(self, attempt: Callable[[], Awaitable[Decision]], timeout: float) -> Decision | None:
        """Re-run ``attempt`` until it admits or ``timeout`` passes; None when it never did (or no room to wait)."""
        if self.waiting >= self.size:
            self.refused_full += 1
            return None
        now = self.clock.loop_time
        deadline = now() + timeout
        self.waiting += 1
        try:
            while True:
                remaining = deadline - now()
                if remaining <= 0:
                    self.expired += 1
                    return None
                with contextlib.suppress(TimeoutError):  # no release here: other processes may have freed one
                    await asyncio.wait_for(self._released.wait(), min(self.poll, remaining))
                decision = await attempt()
                if decision.allowed:
                    self.served += 1
                    return decision
        finally:
            self.waiting -= 1
