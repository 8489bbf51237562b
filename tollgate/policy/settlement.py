"""After the answer: settle token reservations to the real usage, release leases, keep long leases alive.

Settling runs off the hot path (a queue drained by one worker task, emptied
before a graceful shutdown closes the store); each limit settles to what the
request used in its unit (tokens, input or output tokens, money). A stream
that outgrows its reservation extends it while it runs, and is cut before the
event that would pass a spent budget when its rule says ``on_exceed: cut``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from tollgate.background import BackgroundTask
from tollgate.clock import Clock, SystemClock
from tollgate.config.model import Deployment
from tollgate.eager import Eager
from tollgate.errors import GatewayError, StoreError
from tollgate.limiter import Consumed, Lease, Limiter, LimitSpec, Reservation, Settlement
from tollgate.limiter.decision import Charge, SettledLimit
from tollgate.limiter.settling import Finished
from tollgate.policy.admission import Admission, LimitMetrics
from tollgate.token_estimate import CHARS_PER_TOKEN
from tollgate.upstream.usage import StreamLimits, Usage

if TYPE_CHECKING:
    from tollgate.accounting.pricing import Pricing

__all__ = ["EXTEND_MIN_TOKENS", "FinishedRequest", "Settler", "StreamBudget", "consumed"]

log = logging.getLogger("tollgate.settlement")

# A stream past its reservation asks for at least this many more tokens at a time.
EXTEND_MIN_TOKENS: Final = 256
RENEW_EVERY: Final = 15.0
# Read on every event of a stream: Final, a compiled build's constant rather than a lookup in this module's dictionary.
_CHARS_PER_TOKEN: Final = CHARS_PER_TOKEN


class StreamBudget(StreamLimits):
    """A running stream's usage against what it holds on each of its reserved limits (tokens, money).

    Each limit holds what admission reserved plus what extensions granted.
    The relay asks :meth:`covers` before it forwards an event; when the event
    would take a limit past what it holds, the relay awaits :meth:`cover`,
    which extends the short limits by what they still have (never all or
    nothing), then asks again. A limit that has nothing left is closed: with
    ``on_exceed: cut`` the stream ends before that event, with ``allow`` the
    stream goes on and the overdraft is settled afterwards. So a cut stream
    never delivers more than its limits granted, whatever the upstream's pace.
    Ahead of need (once the stream has used three quarters of what a limit
    holds for its output, the prompt's share left out) an extension is asked
    for in the background, so a stream rarely waits; a stream that ends well
    inside its reservation, as most do, asks for none.

    The output is estimated from the text relayed (see :meth:`after`). When
    the request caps its output itself (``max_tokens`` and the like, which its
    provider enforces), the estimate is held to that cap: text a little longer
    than the cap's tokens at :data:`CHARS_PER_TOKEN` is the estimate's error,
    not output the model can produce, so a limit that holds the whole cap is
    neither extended nor cut for it. Past twice the cap's worth of text, or
    past one event with text for each token of it, the provider is not keeping
    to the cap and the estimate is the text's again.
    """

    __slots__ = (
        "admission",
        "limiter",
        "_chars",
        "_texts",
        "_specs",
        "_cuts",
        "_held",
        "_base",
        "_open",
        "_rates",
        "_calm",
        "_cap",
        "_covered",
    )

    def __init__(self, admission: Admission, limiter: Limiter) -> None:
        super().__init__()
        self.admission = admission
        self.limiter = limiter
        self._chars = 0
        self._texts = 0  # events that carried text
        limits = admission.stream_limits
        self._specs = [spec for spec, _ in limits]
        self._cuts = [cut for _, cut in limits]
        self._held = [spec.cost for spec in self._specs]
        self._open = [True] * len(limits)  # False once a limit had nothing more to grant
        self._rates = admission.rates or (0.0, 0.0, 0.0)
        self._cap = admission.completion_cap
        self._covered = [False] * len(limits)  # holds what the capped output counts (see _recalm)
        self._base = [self._used(i, 0) for i in range(len(limits))]  # what each limit counts before any output
        self._calm = 0
        self._recalm()

    def _recalm(self) -> None:
        """Find the completion below which no limit is short, no spent limit cuts and none is due an extension
        ahead of need: up to it, :meth:`short`, :meth:`spent_cut` and :meth:`relayed` have nothing to look at.

        A limit that holds what the request's cap counts is none of these before the output passes the cap.
        Otherwise token limits count ``prompt + completion``, ``completion`` or ``prompt`` alone; a money limit
        (its count rounded from prices) keeps every event on the full checks."""
        calm = 1 << 62
        prompt = self.admission.prompt_estimate
        cap = self._cap
        covered = self._covered
        for i, (spec, held, is_open, base) in enumerate(zip(self._specs, self._held, self._open, self._base)):
            covered[i] = cap > 0 and self._used(i, cap) <= held
            if covered[i]:
                calm = min(calm, cap + 1)
                continue
            unit = spec.unit
            if unit == "nanos":
                calm = 0
                break
            if unit == "input_tokens":  # the same count whatever the output
                if prompt > held or (is_open and held <= base):
                    calm = 0
                    break
                continue
            fixed = prompt if unit == "tokens" else 0
            calm = min(calm, held - fixed + 1)  # short (open) or spent (closed) from there
            if is_open:
                calm = min(calm, -(-(held - base) * 3 // 4))  # asked for ahead from there
        self._calm = calm

    def _used(self, i: int, completion: int) -> int:
        """What limit ``i`` counts for the prompt and ``completion`` tokens."""
        unit = self._specs[i].unit
        prompt = self.admission.prompt_estimate
        if unit == "tokens":
            return prompt + completion
        if unit == "output_tokens":
            return completion
        if unit == "input_tokens":
            return prompt
        fixed, per_input, per_output = self._rates
        return math.ceil(fixed + prompt * per_input + completion * per_output)

    def after(self, chars: int) -> int:
        """The completion tokens once an event of ``chars`` characters of text is relayed.

        At least one token per event that carries text (providers send about one
        each), and one per :data:`CHARS_PER_TOKEN` characters, held to the request's
        cap while that text is within twice the cap's worth and its events no more
        than the cap's tokens.
        """
        return self._estimate(self._chars + chars, self._texts + 1)

    def _estimate(self, chars: int, texts: int) -> int:
        """The completion tokens of ``chars`` characters of text in ``texts`` events (see :meth:`after`)."""
        completion = (chars + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN
        cap = self._cap
        if cap < completion <= 2 * cap and texts <= cap:
            completion = cap
        return completion if completion > texts else texts

    def relayed_calm(self, chars: int) -> bool:
        """An event of ``chars`` characters of text, relayed in one call while the stream stays calm: True when
        its completion (as :meth:`after` says) is below the point where any limit is short, spent or due an
        extension, the event counted as :meth:`relayed` counts it (an extension that has come back forgotten).
        False: nothing counted, the event goes through :meth:`after`, :meth:`short`, :meth:`spent_cut` and
        :meth:`relayed` (four calls an event otherwise, when most events of most streams need none of them)."""
        chars += self._chars
        texts = self._texts + 1
        completion = self._estimate(chars, texts)
        if completion >= self._calm:
            return False
        admission = self.admission
        pending = admission.pending
        if pending is not None and pending.done():
            admission.pending = None
        self._chars = chars
        self._texts = texts
        self.completion_tokens = completion
        return True

    def short(self, completion: int) -> list[tuple[int, int]]:
        """The open limits that ``completion`` tokens would take past what they hold: (limit, units missing)."""
        out: list[tuple[int, int]] = []
        if completion < self._calm:
            return out
        for i, held in enumerate(self._held):
            if self._open[i]:
                missing = self._used(i, completion) - held
                if missing > 0:
                    out.append((i, missing))
        return out

    def spent_cut(self, completion: int) -> LimitSpec | None:
        """The closed limit whose rule cuts that ``completion`` tokens would take past what it granted, if any."""
        if completion < self._calm:
            return None
        for i, cut in enumerate(self._cuts):
            if cut and not self._open[i] and self._used(i, completion) > self._held[i]:
                return self._specs[i]
        return None

    def relayed(self, chars: int, completion: int) -> None:
        """An event of ``chars`` characters went out: count it, and ask for more ahead of need."""
        self._chars += chars
        self._texts += 1
        self.completion_tokens = completion
        admission = self.admission
        pending = admission.pending
        if completion < self._calm and pending is None:
            return
        if pending is not None and pending.done():
            pending = admission.pending = None
        if pending is None:
            base = self._base
            capped = completion <= self._cap
            covered = self._covered
            ahead = [
                (i, 0)
                for i, held in enumerate(self._held)
                if self._open[i]
                and not (capped and covered[i])
                and (self._used(i, completion) - base[i]) * 4 >= (held - base[i]) * 3
            ]
            if ahead:  # asked for beside the stream, without a Task (see Eager)
                admission.pending = Eager(self._extend(ahead), asyncio.get_running_loop())

    async def cover(self, completion: int) -> None:
        """Extend every limit short for ``completion`` tokens; a limit that cannot cover it is closed."""
        pending = self.admission.pending
        if pending is not None:
            await _finished(pending)
            self.admission.pending = None
        short = self.short(completion)
        if short:
            await self._extend(short)
        for i, _ in self.short(completion):  # still short: nothing more is to be had
            self._open[i] = False
        self._recalm()

    async def _extend(self, short: list[tuple[int, int]]) -> None:
        """Ask each limit for its missing units (at least one) plus a step, taking what it has left."""
        wants = []
        for i, missing in short:
            spec = self._specs[i]
            need = max(1, missing)
            step = max(self._step(spec), spec.cost // 2)
            wants.append((spec, need + step, need))
        a = self.admission
        try:
            extension = await self.limiter.extend(wants, store=a.store)
        except GatewayError as exc:  # the gateway's own trouble (overloaded): grant nothing rather than go unchecked
            log.warning("extending a stream's reservation failed (%s)", exc)
            return
        if extension.reservation is not None:
            a.extensions.append(extension.reservation)
        for (i, missing), granted in zip(short, extension.granted):
            if granted > 0:
                self._held[i] += granted
            elif missing > 0:
                self._open[i] = False
        self._recalm()

    def _step(self, spec: LimitSpec) -> int:
        """How much more than it needs a limit is asked for: :data:`EXTEND_MIN_TOKENS` tokens' worth."""
        if spec.unit != "nanos":
            return EXTEND_MIN_TOKENS
        return math.ceil(EXTEND_MIN_TOKENS * self._rates[2])


async def _finished(extension: Eager) -> None:
    """Returns once ``extension`` has ended, whatever it ended with, as ``gather(task, return_exceptions=True)`` does
    for a task (cancelling the waiter cancels the extension too), without gather's interpreted machinery."""
    if extension.done():
        return
    try:
        await extension.future()
    except asyncio.CancelledError:
        waiter = asyncio.current_task(extension.get_loop())
        if waiter is not None and waiter.cancelling():  # the waiter's own cancellation: it goes on
            raise
    except Exception:  # the extension's failure is its own (it logs what it must)
        pass


def consumed(admission: Admission, usage: Usage | None, reached_upstream: bool, cost: int | None) -> Consumed:
    """What the request really used, for settling its reservation: the usage and its cost when known,
    the estimate reserved when it reached the model but no usage came back, nothing when it never did."""
    if usage is not None:
        return Consumed.of_usage(
            usage.prompt_tokens, usage.completion_tokens, cost if cost is not None else admission.cost_estimate
        )
    if reached_upstream:
        return Consumed.of_usage(admission.prompt_estimate, admission.completion_reserved, admission.cost_estimate)
    return _NOTHING


_NOTHING = Consumed(0, 0, 0, 0)
_new = tuple.__new__  # a named tuple without its Python-level constructor (one per settled stream that extended)


class FinishedRequest(Protocol):
    """What settling reads of a request that ended (the pipeline's ``RequestContext`` is one)."""

    @property
    def admission(self) -> Admission | None: ...

    @property
    def usage(self) -> Usage | None: ...

    @property
    def model(self) -> str | None: ...

    @property
    def model_served(self) -> str | None: ...

    @property
    def deployment(self) -> Deployment | None: ...

    @property
    def first_byte_at(self) -> float | None: ...


class Settler:
    """Settles finished requests in the background and renews the leases of requests still running."""

    def __init__(
        self,
        limiter: Limiter,
        on_release: Callable[[], None] | None = None,
        metrics: LimitMetrics | None = None,
        pricing: Callable[[], Pricing] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.limiter = limiter
        self._clock = clock or SystemClock()  # the loop time of lease renewals
        self._pricing = pricing  # prices the real usage of requests that hold a money budget
        self._on_release = on_release
        self._metrics = metrics  # counts overdrafts (tokens used past a spent budget, with on_exceed: allow)
        self.overdrafts = 0
        self._queue: deque[tuple[Admission, Consumed]] = deque()
        self._wake: asyncio.Event | None = None
        self._worker = BackgroundTask("settler", self._work)
        self._closing = False
        self._leases: dict[Lease, float] = {}
        self.settled = 0
        self.failures = 0
        self._renewer = BackgroundTask("lease-renewer", self.renew_loop)

    def hold(self, lease: Lease) -> None:
        self._leases[lease] = self._clock.loop_time()

    def finish(self, ctx: FinishedRequest) -> None:
        """Called once per admitted request when it ends, however it ends; never blocks the response."""
        admission = ctx.admission
        if admission is None or admission.settled:
            return
        admission.settled = True
        lease = admission.decision.lease
        if lease is not None:
            self._leases.pop(lease, None)
        usage = ctx.usage
        cost = None
        if usage is not None and admission.rates is not None and self._pricing is not None:
            pricing = self._pricing()
            cost = pricing.cost_nanos(
                pricing.priced_model(
                    ctx.model_served, ctx.model, ctx.deployment.model if ctx.deployment is not None else None
                ),
                usage.prompt_tokens,
                usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
        queue = self._queue
        queue.append((admission, consumed(admission, usage, ctx.first_byte_at is not None, cost)))
        # The worker empties the queue before it waits again: only the first of a batch needs to wake it.
        if len(queue) == 1 and self._wake is not None:
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

    async def _settle_batch(self, batch: deque[tuple[Admission, Consumed]]) -> None:
        """Finished requests settle and release together: one store call for the whole batch (per hash slot on
        Cluster). A stream that extended its reservation settles each part to its share of the real use; one whose
        extension is still in flight, rarer, waits for it and settles on its own (concurrently on a remote store)."""
        items: list[Finished] = []
        # per request settled in the batch: its admission, its items' span, and whether its reservation was split
        spans: list[tuple[Admission, int, int, bool]] = []
        waiting: list[tuple[Admission, Consumed]] = []
        for admission, actual in batch:
            pending = admission.pending
            if pending is not None:
                if not pending.done():
                    waiting.append((admission, actual))
                    continue
                admission.pending = None  # it ended after the stream's last event: what it granted is in extensions
            first = len(items)
            decision = admission.decision
            if not admission.extensions:
                items.append((decision.reservation, actual, decision.lease))
                spans.append((admission, first, first + 1, False))
                continue
            reservation = decision.reservation
            if reservation is not None:
                for charge, delta in _shares([reservation, *admission.extensions], actual):
                    items.append((Reservation((charge,)), charge.spec.cost + delta, None))
            if decision.lease is not None:
                items.append((None, 0, decision.lease))
            spans.append((admission, first, len(items), True))
        if spans:
            results = await self.limiter.finish_many(items) if items else []
            failed = 0
            released_any = False
            for admission, first, end, split in spans:
                lease = admission.decision.lease
                released = lease is not None and results[end - 1][1]
                if split:
                    limits: list[SettledLimit] = []
                    degraded = False
                    for settlement, _ in results[first:end]:
                        if settlement is not None:
                            limits += settlement.limits
                            degraded = degraded or settlement.degraded
                    reservation = admission.decision.reservation
                    if reservation is not None:
                        combined = _new(Settlement, (tuple(limits), degraded))
                        reservation.settlement = combined
                        for part in admission.extensions:
                            part.settlement = combined
                    else:
                        combined = None
                else:
                    combined = results[first][0]
                short = False  # a reservation left as estimated, or a lease left to its TTL
                if combined is not None:
                    for limit in combined.limits:
                        if limit.overdraft > 0:
                            self._count_overdrafts(combined)
                            break
                    short = combined.degraded
                if lease is not None:
                    if released:
                        released_any = True
                    else:
                        short = True
                if short:
                    failed += 1
            if released_any and self._on_release is not None:
                self._on_release()  # waiters for a lease try again, once for the batch
            self.settled += len(spans) - failed
            self.failures += failed
            if failed:
                log.warning(
                    "settling %d request(s) failed on the store; their reservations stay as estimated and "
                    "their leases expire by TTL",
                    failed,
                )
        if waiting:
            if len(waiting) > 1 and self.limiter.engine().remote:
                await asyncio.gather(*(self._settle(*item) for item in waiting))
            else:
                for item in waiting:
                    await self._settle(*item)

    def _count_overdrafts(self, settlement: Settlement) -> None:
        for limit in settlement.limits:
            if limit.overdraft > 0:
                self.overdrafts += 1
                if self._metrics is not None:
                    self._metrics.limit_decision(limit.name, "overdraft")

    async def _settle(self, admission: Admission, actual: Consumed) -> None:
        """One request whose stream extended its reservation (or is still extending it)."""
        try:
            if admission.pending is not None:
                await _finished(admission.pending)
            reservation = admission.reservation
            if reservation is not None:
                settlement = await self.limiter.adjust(_shares([reservation, *admission.extensions], actual))
                reservation.settlement = settlement
                for part in admission.extensions:
                    part.settlement = settlement
                self._count_overdrafts(settlement)
            if admission.lease is not None:
                await self.limiter.release(admission.lease)
                if self._on_release is not None:
                    self._on_release()
            self.settled += 1
        except StoreError as exc:
            self.failures += 1
            log.warning(
                "settling a request failed (%s); its reservation stays as estimated and its lease expires by TTL", exc
            )

    async def renew_loop(self) -> None:
        """Renew leases older than RENEW_EVERY seconds, so long streams keep theirs (a crashed process's expire)."""
        clock = self._clock
        while True:
            await asyncio.sleep(RENEW_EVERY / 3)
            now = clock.loop_time()
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
        self._wake = asyncio.Event()
        if self._queue:  # requests that finished before the worker started
            self._wake.set()
        self._worker.start()
        self._renewer.start()

    async def close(self) -> None:
        await self._renewer.stop()
        if self._worker.running and self._wake is not None:
            self._closing = True  # the worker finishes what it holds, then stops
            self._wake.set()
            await self._worker.join()
        await self.drain()


def _shares(parts: list[Reservation], actual: Consumed) -> list[tuple[Charge, int]]:
    """Each limit's real use spread over what it held, in order (the reservation, then each extension):
    every part is filled up to what it reserved, the last takes any overdraft, what was not used is given back.
    One limit's parts may sit in two stores (an extension taken on the local fallback during an outage)."""
    by_limit: dict[tuple[str, tuple[tuple[str, str], ...]], list[Charge]] = {}
    for part in parts:
        for charge in part.charges:
            by_limit.setdefault((charge.spec.name, charge.spec.scope_key), []).append(charge)
    deltas = []
    for charges in by_limit.values():
        left = actual.of(charges[0].spec.unit)
        last = len(charges) - 1
        for i, charge in enumerate(charges):
            share = left if i == last else min(left, charge.spec.cost)
            if share != charge.spec.cost:
                deltas.append((charge, share - charge.spec.cost))
            left -= share
    return deltas
