"""After the answer: settle token reservations to the real usage, release leases, keep long leases alive.

Settling runs off the hot path (a queue drained by one worker task, emptied
before a graceful shutdown closes the store); a stream that outgrows its reservation
extends it while it runs, and is cut when the budget is gone and its rule
says ``on_exceed: cut``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import StoreError
from .limiter import Lease, Limiter, Settlement

if TYPE_CHECKING:
    from .admission import Admission, LimitMetrics
    from .context import RequestContext, Usage

__all__ = ["Settler", "StreamBudget", "EXTEND_MIN_TOKENS"]

log = logging.getLogger("tollgate.settlement")

# A stream past its reservation asks for at least this many more tokens at a time.
EXTEND_MIN_TOKENS = 256
RENEW_EVERY = 15.0


class StreamBudget:
    """A stream's tokens against what it holds (reservation + extensions); extends through the limiter."""

    __slots__ = ("admission", "limiter", "completion_tokens", "exhausted", "_chars")

    def __init__(self, admission: Admission, limiter: Limiter) -> None:
        self.admission = admission
        self.limiter = limiter
        self.completion_tokens = 0
        self.exhausted = False
        self._chars = 0

    @property
    def cut(self) -> bool:
        return self.admission.cut_on_exceed

    def held(self) -> int:
        return self.admission.reserved_tokens + self.admission.extended_tokens

    def used(self) -> int:
        return self.admission.prompt_estimate + self.completion_tokens

    def add_text_chars(self, chars: int) -> None:
        self._chars += chars
        self.completion_tokens = (self._chars + 3) // 4

    def over(self) -> bool:
        return self.used() > self.held()

    def should_extend(self) -> bool:
        """At three quarters of what it holds, a stream asks for more (so the answer is in before it is needed)."""
        return not self.exhausted and self.used() * 4 >= self.held() * 3

    async def extend(self) -> None:
        """Reserve more tokens on the stream's token limits; marks the budget exhausted when refused."""
        a = self.admission
        want = max(EXTEND_MIN_TOKENS, a.reserved_tokens // 2)
        specs = [s.with_cost(want) for s in a.token_specs]
        if not specs:
            return
        try:
            decision = await self.limiter.admit(specs, store=a.store)
        except StoreError:
            return  # the store's trouble is not the client's: keep streaming, settle later
        if not decision.allowed:
            self.exhausted = True
            return
        if decision.reservation is not None:
            a.extensions.append(decision.reservation)
        a.extended_tokens += want


def _actual_tokens(admission: Admission, usage: Usage | None, reached_upstream: bool) -> int:
    """What the request really cost in tokens, for settling its reservation."""
    if usage is not None:
        return usage.total_tokens
    if reached_upstream:
        return admission.reserved_tokens  # no usage came back: keep the estimate
    return 0  # nothing reached the model: refund everything


class Settler:
    """Settles finished requests in the background and renews the leases of requests still running."""

    def __init__(
        self, limiter: Limiter, on_release: Callable[[], None] | None = None, metrics: LimitMetrics | None = None
    ) -> None:
        self.limiter = limiter
        self._on_release = on_release
        self._metrics = metrics  # counts overdrafts (tokens used past a spent budget, with on_exceed: allow)
        self.overdrafts = 0
        self._queue: deque[tuple[Admission, Usage | None, bool]] = deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._leases: dict[Lease, float] = {}
        self.settled = 0
        self.failures = 0
        self._renewer: asyncio.Task[None] | None = None

    def hold(self, lease: Lease) -> None:
        self._leases[lease] = asyncio.get_running_loop().time()

    def finish(self, ctx: RequestContext) -> None:
        """Called once per admitted request when it ends, however it ends; never blocks the response."""
        admission = ctx.admission
        if admission is None or admission.settled:
            return
        admission.settled = True
        if admission.lease is not None:
            self._leases.pop(admission.lease, None)
        self._queue.append((admission, ctx.usage, ctx.first_byte_at is not None))
        if self._wake is not None:
            self._wake.set()

    async def _work(self) -> None:
        """Settle what finished, a batch at a time (see :meth:`_settle_batch`)."""
        assert self._wake is not None
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue, deque()
                await self._settle_batch(batch)

    async def _settle_batch(self, batch: deque[tuple[Admission, Usage | None, bool]]) -> None:
        """Requests without stream extensions settle and release together: one store call for the whole batch
        (per hash slot on Cluster). The others, rarer, settle one by one, concurrently on a remote store."""
        plain: list[tuple[Admission, int]] = []
        extended: list[tuple[Admission, int]] = []
        for admission, usage, reached_upstream in batch:
            actual = _actual_tokens(admission, usage, reached_upstream)
            if admission.pending is None and not admission.extensions:
                plain.append((admission, actual))
            else:
                extended.append((admission, actual))
        if plain:
            results = await self.limiter.finish_many([(a.reservation, actual, a.lease) for a, actual in plain])
            failed = 0
            for (admission, _), (settlement, released) in zip(plain, results):
                if settlement is not None:
                    self._count_overdrafts(settlement)
                if released and self._on_release is not None:
                    self._on_release()
                if (admission.lease is not None and not released) or (settlement is not None and settlement.degraded):
                    failed += 1
            self.settled += len(plain) - failed
            self.failures += failed
            if failed:
                log.warning("settling %d request(s) failed on the store; their reservations stay as estimated and "
                            "their leases expire by TTL", failed)
        if extended:
            if len(extended) > 1 and self.limiter.engine().remote:
                await asyncio.gather(*(self._settle(*item) for item in extended))
            else:
                for item in extended:
                    await self._settle(*item)

    def _count_overdrafts(self, settlement: Settlement) -> None:
        for limit in settlement.limits:
            if limit.overdraft > 0:
                self.overdrafts += 1
                if self._metrics is not None:
                    self._metrics.limit_decision(limit.name, "overdraft")

    async def _settle(self, admission: Admission, actual: int) -> None:
        """One request whose stream extended its reservation (or is still extending it)."""
        try:
            if admission.pending is not None:
                await asyncio.gather(admission.pending, return_exceptions=True)
            reservation = admission.reservation
            if reservation is not None:
                # The real usage fills the reservation, then each extension in turn; the last takes any
                # overdraft. A stream cut short gives back what it held and did not use, extensions included.
                held = [reservation, *admission.extensions]
                left = actual
                for i, part in enumerate(held):
                    share = left if i == len(held) - 1 else min(left, part.reserved)
                    self._count_overdrafts(await self.limiter.settle(part, share))
                    left -= share
            if admission.lease is not None:
                await self.limiter.release(admission.lease)
                if self._on_release is not None:
                    self._on_release()
            self.settled += 1
        except StoreError as exc:
            self.failures += 1
            log.warning("settling a request failed (%s); its reservation stays as estimated and its lease expires by TTL", exc)

    async def renew_loop(self) -> None:
        """Renew leases older than RENEW_EVERY seconds, so long streams keep theirs (a crashed process's expire)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RENEW_EVERY / 3)
            now = loop.time()
            for lease, since in list(self._leases.items()):
                if now - since < RENEW_EVERY or lease.released:
                    continue
                self._leases[lease] = now
                with contextlib.suppress(StoreError):
                    await self.limiter.renew(lease)

    async def drain(self) -> None:
        """Settle everything still queued (graceful shutdown, after the worker stopped)."""
        while self._queue:
            batch, self._queue = self._queue, deque()
            await self._settle_batch(batch)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._worker = loop.create_task(self._work())
        self._renewer = loop.create_task(self.renew_loop())

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._worker is not None and self._wake is not None:
            self._closing = True  # the worker finishes what it holds, then stops
            self._wake.set()
            await self._worker
        self._renewer = self._worker = None
        await self.drain()
