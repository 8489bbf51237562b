"""A bounded wait for a concurrency slot: priority classes first, then round robin between tenants, with a deadline.

    queue = FairQueue(limit=8, size=1000)
    async with queue.slot(tenant, priority, timeout):    # timeout: seconds it may wait
        ...                                              # at most `limit` bodies run at once

A request that finds a free slot and nobody waiting takes it without waiting
(:meth:`FairQueue.try_acquire` is the synchronous form for hot paths). Otherwise
it waits. When a slot frees, it goes to the highest priority class with
waiters; within a class tenants take turns (one tenant with 1,000 waiting
delays another tenant's next request by at most one turn); within a tenant,
first come first served. A full queue refuses at once; a waiter still waiting
at its deadline is refused. Both raise :class:`QueueRefused`, which the caller
turns into its own error (429 or 503 with a clear message).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from types import TracebackType

__all__ = ["FairQueue", "QueueRefused"]


class QueueRefused(Exception):
    """No slot: ``reason`` is ``"full"`` (no room to wait) or ``"deadline"`` (waited ``waited`` seconds)."""

    def __init__(self, reason: str, waited: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.waited = waited


class FairQueue:
    __slots__ = (
        "limit",
        "size",
        "in_use",
        "waiting",
        "_classes",
        "waited_total",
        "served_after_wait",
        "refused_full",
        "expired",
    )

    def __init__(self, limit: int, size: int) -> None:
        self.limit = limit
        self.size = size
        self.in_use = 0
        self.waiting = 0
        # priority -> tenant -> FIFO of waiters; a tenant's entry moves to the end after each turn.
        self._classes: dict[int, OrderedDict[str, deque[asyncio.Future[None]]]] = {}
        # Counters for metrics.
        self.waited_total = 0
        self.served_after_wait = 0
        self.refused_full = 0
        self.expired = 0

    @property
    def has_free_slot(self) -> bool:
        return self.in_use < self.limit and not self.waiting

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody waits for it; never waits."""
        if self.in_use < self.limit and not self.waiting:
            self.in_use += 1
            return True
        return False

    async def acquire(self, tenant: str, priority: int, timeout: float) -> None:
        """Take a slot, waiting ``timeout`` seconds at most."""
        if self.try_acquire():
            return
        if self.waiting >= self.size:
            self.refused_full += 1
            raise QueueRefused("full")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        tenants = self._classes.get(priority)
        if tenants is None:
            tenants = self._classes[priority] = OrderedDict()
        waiters = tenants.get(tenant)
        if waiters is None:
            waiters = tenants[tenant] = deque()
        waiters.append(fut)
        self.waiting += 1
        self.waited_total += 1
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we gave up: pass the slot on
            else:
                fut.cancel()  # skipped when its turn comes
                self.waiting -= 1
            if isinstance(exc, TimeoutError):
                self.expired += 1
                raise QueueRefused("deadline", loop.time() - started) from None
            raise
        self.served_after_wait += 1

    def release(self) -> None:
        """Give a slot back: to the next waiter in line, or to the pool."""
        if self.in_use > self.limit:  # the limit was lowered by a reload: shrink first
            self.in_use -= 1
            return
        fut = self._next_waiter()
        if fut is None:
            self.in_use -= 1
        else:
            fut.set_result(None)

    def set_limit(self, limit: int, size: int) -> None:
        """A reload changed the limit: a raised one lets waiters in now."""
        self.limit = limit
        self.size = size
        while self.in_use < self.limit:
            fut = self._next_waiter()
            if fut is None:
                break
            self.in_use += 1
            fut.set_result(None)

    def slot(self, tenant: str, priority: int, timeout: float) -> _Slot:
        return _Slot(self, tenant, priority, timeout)

    def _next_waiter(self) -> asyncio.Future[None] | None:
        classes = self._classes
        while classes:
            priority = max(classes)
            tenants = classes[priority]
            while tenants:
                tenant, waiters = next(iter(tenants.items()))
                fut = None
                while waiters:
                    candidate = waiters.popleft()
                    if not candidate.done():
                        fut = candidate
                        break
                if waiters:
                    tenants.move_to_end(tenant)
                else:
                    del tenants[tenant]
                if fut is not None:
                    self.waiting -= 1
                    if not tenants:
                        del classes[priority]
                    return fut
            del classes[priority]
        return None


class _Slot:
    __slots__ = ("queue", "tenant", "priority", "timeout")

    def __init__(self, queue: FairQueue, tenant: str, priority: int, timeout: float) -> None:
        self.queue = queue
        self.tenant = tenant
        self.priority = priority
        self.timeout = timeout

    async def __aenter__(self) -> None:
        await self.queue.acquire(self.tenant, self.priority, self.timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.queue.release()
