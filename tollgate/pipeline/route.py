"""Route stage: one request's walk down its model chain, attempt by attempt, and what the stage works with.

A :class:`Walk` holds where the request is (the current model, the next hop
of its fallback chain, the deployments tried in this round), what its last
failure was, and the retry budget it spent; the attempt loop
(tollgate/pipeline/attempts.py) drives it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tollgate.clock import Clock
from tollgate.config.model import Deployment
from tollgate.config.resilience import Resilience
from tollgate.errors import BadRequest, UpstreamAuthError, UpstreamError, UpstreamUnavailable
from tollgate.pipeline.context import RequestContext
from tollgate.pipeline.forward import Answer, forward
from tollgate.policy.shedding import Shedder
from tollgate.routing.balancing import DeploymentState, choose
from tollgate.routing.deadletter import DeadLetterLog
from tollgate.routing.degradation import Hotspots, ProactiveFallbacks
from tollgate.routing.models import ModelRoute
from tollgate.routing.retry_budget import RetryBudget
from tollgate.routing.slot_queue import FairQueue, QueueRefused
from tollgate.routing.verdicts import backoff, judge, outcome, record_failure, retryable
from tollgate.upstream.estimates import estimate_prompt_tokens
from tollgate.upstream.pool import UpstreamClient, UpstreamPool

__all__ = ["AttemptCounters", "Forward", "QueueRateLimited", "RouteDeps", "Walk", "tenant_of"]

# One attempt on one deployment: the forward stage, or the same in a span when tracing is on
# (tollgate/pipeline/traces.py).
Forward = Callable[[RequestContext, Clock, Deployment, UpstreamClient, frozenset[int]], Awaitable[Answer]]

log = logging.getLogger("tollgate.attempts")

# An upstream that refuses the gateway's credential is logged at most this often (seconds), with a count.
_AUTH_LOG_EVERY = 10.0


class AttemptCounters:
    """Gateway-wide counters for metrics; they live on ``GatewayState`` and survive reloads."""

    __slots__ = (
        "requests",
        "attempts",
        "retries",
        "budget_refused",
        "fallbacks",
        "queue_refused",
        "failed",
        "auth_refused",
        "auth_logged",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.attempts = 0
        self.retries = 0
        self.budget_refused = 0
        self.fallbacks: dict[str, int] = {}  # "from->to" -> count (the model that served)
        self.queue_refused = 0
        self.failed = 0
        self.auth_refused: dict[str, int] = {}  # upstream -> 401/403 answers to the gateway's credential
        self.auth_logged: dict[str, float] = {}  # upstream -> when the last such answer was logged (monotonic)


class AuthFailureMetrics(Protocol):
    def upstream_auth_failure(self, upstream: str, status: int) -> None: ...


@dataclass(frozen=True, slots=True)
class RouteDeps:
    """The routes and resilience settings of the config version, and the process's live routing state; what makes
    one attempt (the forward stage, traced when tracing is on)."""

    routes: Mapping[str, ModelRoute]
    resilience: Resilience
    clock: Clock
    shedder: Shedder
    pool: UpstreamPool
    retry_budget: RetryBudget
    counters: AttemptCounters
    proactive: ProactiveFallbacks
    hotspots: Hotspots
    metrics: AuthFailureMetrics
    dead_letters: DeadLetterLog
    forward: Forward = forward


def tenant_of(ctx: RequestContext) -> str:
    principal = ctx.principal
    return principal.tenant if principal is not None else ctx.client_ip


class QueueRateLimited(UpstreamUnavailable):
    """A queue refusal the config wants answered 429: carried as an upstream error, raised as RateLimited."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message, code="queue_timeout", headers=headers)


class Walk:
    """One request's way down its model chain (the first model, then its fallbacks depth-first)."""

    __slots__ = (
        "ctx",
        "deps",
        "policy",
        "clients",
        "first",
        "current",
        "chain",
        "hop",
        "start",
        "tried",
        "excluded",
        "rounds",
        "paid",
        "queued",
        "now",
        "last",
        "trail",
        "stopped",
        "tokens",
        "max_attempts",
        # the attempt under way: its upstream's client, its deployment's state, its breaker permit, when it began
        "client",
        "dstate",
        "permit",
        "began",
    )

    def __init__(self, ctx: RequestContext, deps: RouteDeps, first: ModelRoute) -> None:
        self.ctx = ctx
        self.deps = deps
        policy = self.policy = deps.resilience.retries
        self.clients = deps.pool.clients
        self.first = self.current = first
        self.chain = self._allowed(first.fallbacks) if first.fallbacks else ()
        self.hop = 0  # next index in chain
        # Bit mask of the deployments a request pinned to one upstream may not use (see _pin); none otherwise.
        self.excluded = 0 if ctx.pinned_upstream is None else self._pin(ctx.pinned_upstream)
        if self.chain and deps.proactive.diverted(first.name):
            self.current, self.hop = self.chain[0], 1
        self.start = self.current.start()
        self.tried = self.excluded  # bit mask of the current model's deployments tried in this round
        self.rounds = 0  # rounds over the current model after the first
        self.paid = True  # the next attempt needs no retry budget (the first, a fallback hop, or a paid round)
        self.queued = False  # the deployment picked has a slot only after a wait in its queue
        self.now = 0.0  # the monotonic time of the last pick
        self.last: UpstreamError | None = None
        self.trail: list[dict[str, Any]] | None = None  # only built once something fails
        self.stopped = False  # no attempt is left to make
        # A rough prompt estimate for deployments with a tpm limit, counted while the attempt runs (served() counts
        # the answer's usage instead): a quarter of the body, but for an upload (whose file is no text) the estimate
        # of its text fields.
        assert ctx.endpoint is not None and ctx.body is not None
        if ctx.endpoint.multipart:
            self.tokens = estimate_prompt_tokens(ctx.endpoint.kind, ctx.body)
        else:
            self.tokens = len(ctx.body_bytes) >> 2
        self.max_attempts = policy.max + 1
        self.client: UpstreamClient | None = None
        self.dstate: DeploymentState | None = None
        self.permit = 0
        self.began = 0.0

    def _pin(self, upstream: str) -> int:
        """Only the first model's deployments on ``upstream`` may serve, and no fallback: the request continues a
        conversation that upstream stores. Returns the mask of the others; refuses when none is left."""
        first = self.first
        excluded = 0
        for j, deployment in enumerate(first.deployments):
            if deployment.upstream != upstream:
                excluded |= 1 << j
        if excluded == (1 << len(first.deployments)) - 1:
            raise BadRequest(
                f"previous_response_id names a response stored by upstream {upstream!r}, "
                f"which does not serve model {first.name!r}",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        self.chain = ()
        return excluded

    def _allowed(self, chain: tuple[ModelRoute, ...]) -> tuple[ModelRoute, ...]:
        """A fallback never serves a tenant a model it may not use."""
        principal = self.ctx.principal
        if not chain or principal is None or principal.allowed_models is None:
            return chain
        return tuple(m for m in chain if principal.may_use(m.name))

    # -- where to go next ---------------------------------------------------------------------------------
    def pick(self) -> int:
        """A deployment of the current model that can take the request now (or after a wait in its queue), or -1."""
        now = self.now = self.deps.clock.monotonic()
        current, tried, tokens = self.current, self.tried, self.tokens
        j = choose(current.states, current.strategy, self.start, tried, now, tokens)  # current.pick(), one call less
        self.queued = False
        if j < 0:
            j = current.queue_pick(tried, now, tokens)
            self.queued = j >= 0
        return j

    def fall_back(self) -> bool:
        """On to the next model of the chain; False when none is left."""
        if self.hop >= len(self.chain):
            return False
        current = self.current = self.chain[self.hop]
        self.hop += 1
        self.tried = self.rounds = 0
        self.paid = True
        self.start = current.start()
        return True

    async def again(self) -> bool:
        """Another round over the current model, after a backoff: only after a retryable failure, within the
        attempts, the retry budget and the model's total timeout."""
        ctx, last = self.ctx, self.last
        if not (self.tried and last is not None and retryable(last, self.policy) and ctx.attempts < self.max_attempts):
            return False
        if not self.paid and not self.spend_retry():
            return False
        self.rounds += 1
        delay = backoff(self.policy, self.rounds, last)
        if self.deps.clock.loop_time() + delay >= ctx.started + self.current.total_timeout:
            return False
        await asyncio.sleep(delay)
        self.tried = self.excluded
        return True

    def spend_retry(self) -> bool:
        """A retry from the gateway's budget for the next attempt (the first, one after a hop, and one in a paid
        round need none: ``paid``)."""
        deps = self.deps
        if not deps.retry_budget.try_retry():
            deps.counters.budget_refused += 1
            log.info("request %s: retry budget exhausted, not retrying %s", self.ctx.request_id, self.current.name)
            return False
        deps.counters.retries += 1
        self.paid = True
        return True

    # -- one attempt ----------------------------------------------------------------------------------------
    # The attempt loop (tollgate/pipeline/attempts.py) makes an attempt on deployment j as: ``reach(j)``, then
    # ``wait_for_slot(j)`` when ``queued``, ``begin(j)``, its own ``await`` of ``deps.forward`` with ``client``,
    # ``failed(exc)`` when that raised an upstream error (``abandon()`` when it was cancelled), ``finish()``
    # whatever happened, ``served()`` when it answered. The forward stage is awaited there, not in a coroutine
    # of this class: one coroutine layer less on every resumption of the request.
    def reach(self, j: int) -> bool:
        """Deployment ``j`` is tried in this round; False when its upstream's client is not there."""
        self.tried |= 1 << j
        upstream = self.current.deployments[j].upstream
        client = self.clients.get(upstream)
        if client is None or client.http is None:  # only while a reload swaps the pool
            self.last = UpstreamUnavailable(f"upstream {upstream!r} is not available")
            return False
        self.client = client
        return True

    def begin(self, j: int) -> bool:
        """Deployment ``j``'s slot (already held after a wait in its queue) and breaker permit, and the attempt
        counted; False when its breaker refuses (nothing is owed then)."""
        ctx, deps, current = self.ctx, self.deps, self.current
        dstate = current.states[j]
        queue = dstate.queue
        if queue is not None and not self.queued:
            queue.try_acquire()  # pick() saw a free slot, and nothing awaited since
        permit = dstate.breaker.acquire()
        if not permit:  # the half-open probes were taken while we queued
            if queue is not None:
                queue.release()
            return False
        deployment = current.deployments[j]
        self.dstate = dstate
        self.permit = permit
        ctx.attempts += 1
        deps.counters.attempts += 1
        self.paid = False
        ctx.model_served = current.name
        ctx.deployment = deployment
        if current is not self.first:
            ctx.fallback_from = self.first.name
        if dstate.rpm is not None:
            dstate.rpm.add(self.now)
        if dstate.tpm is not None:
            dstate.tpm.add(self.now, self.tokens)
        dstate.inflight += 1
        dstate.calls += 1
        dstate.tokens += self.tokens
        self.began = deps.clock.loop_time()
        return True

    def finish(self) -> None:
        """The attempt begun is over, whatever its outcome: its deployment's in-flight count and queue slot."""
        dstate = self.dstate
        assert dstate is not None
        dstate.inflight -= 1
        if dstate.queue is not None:
            dstate.queue.release()

    def abandon(self) -> None:
        """The attempt was cancelled (the client left): no verdict on the deployment."""
        assert self.dstate is not None
        self.dstate.breaker.abandon(self.permit)

    def failed(self, exc: UpstreamError) -> None:
        """The attempt failed before anything reached the client."""
        deployment = self.ctx.deployment
        assert self.dstate is not None and deployment is not None
        self._failed(self.dstate, deployment.upstream, self.permit, exc, self.began)

    def served(self) -> None:
        """The attempt answered. A stream may still have broken after its first event: that is the deployment's
        failure too."""
        ctx, deps, current, dstate = self.ctx, self.deps, self.current, self.dstate
        permit, began = self.permit, self.began
        assert dstate is not None and ctx.deployment is not None
        error = ctx.error
        broke = error is not None and error.startswith("upstream_")
        ttfb = (ctx.first_byte_at or began) - began
        if broke:
            dstate.failures += 1
            dstate.breaker.failure(permit, error or "")
        elif ctx.client_disconnected:
            dstate.breaker.abandon(permit)
        else:
            dstate.observe_latency(ttfb)
            dstate.breaker.success(permit, ttfb)
        usage = ctx.usage
        if usage is not None:
            # The deployment's tokens (a scaling signal) and its tpm window count what it served, prompt and
            # completion as the answer reported them (or the stream's estimate), in place of the rough prompt
            # estimate counted when the attempt began.
            delta = usage.prompt_tokens + usage.completion_tokens - self.tokens
            if delta:
                dstate.tokens += delta
                if dstate.tpm is not None:
                    dstate.tpm.correct(deps.clock.monotonic(), delta)
        deps.proactive.observe(current.name, broke, ttfb)
        if current is not self.first:
            key = f"{self.first.name}->{current.name}"
            deps.counters.fallbacks[key] = deps.counters.fallbacks.get(key, 0) + 1
        if broke:
            self.note(ctx.deployment.upstream, error or "", deps.clock.loop_time() - began)
            dead_letter(ctx, deps, self.trail, 200, error, "the stream broke after its first event")

    async def wait_for_slot(self, j: int) -> bool:
        """Deployment ``j``'s concurrency slot after a wait in its queue; False when the queue refused."""
        return await self._wait_for_slot(j, self.current.states[j].queue)

    async def _wait_for_slot(self, j: int, queue: FairQueue | None) -> bool:
        """Deployment ``j``'s concurrency slot after a wait in its queue; False when the queue refused."""
        assert queue is not None
        policy = self.deps.resilience.queue
        try:
            await queue.acquire(tenant_of(self.ctx), self.ctx.priority, policy.deadline)
        except QueueRefused as exc:
            self.deps.counters.queue_refused += 1
            last = self.last = _queue_error(self.current, exc, policy.deadline, policy.status)
            self.note(self.current.deployments[j].upstream, last.code or "queue", exc.waited)
            self.stopped = not self.fall_back()
            return False
        return True

    def _failed(self, dstate: DeploymentState, upstream: str, permit: int, exc: UpstreamError, began: float) -> None:
        """The attempt failed before anything reached the client: judge it, and say where to go next."""
        deps, current = self.deps, self.current
        self.last = exc
        if isinstance(exc, UpstreamAuthError):
            _auth_refused(self.ctx, deps, exc)
        record_failure(dstate, permit, exc, deps.clock.monotonic())
        deps.proactive.observe(current.name, True, 0.0)
        self.note(upstream, outcome(exc), deps.clock.loop_time() - began)
        verdict = judge(exc, current, self.policy)
        if verdict == "relay":
            self.stopped = True
            return
        if verdict == "context":
            self.chain, self.hop = self._allowed(current.context_fallbacks), 0
        if verdict != "retry":
            self.stopped = not self.fall_back()

    def note(self, upstream: str, result: str, seconds: float) -> None:
        """One attempt in the request's trail (kept for the dead-letter log)."""
        if self.trail is None:
            self.trail = []
        self.trail.append(
            {"model": self.current.name, "upstream": upstream, "outcome": result, "seconds": round(seconds, 4)}
        )


def _auth_refused(ctx: RequestContext, deps: RouteDeps, exc: UpstreamAuthError) -> None:
    """Count it, and tell the operator in the provider's words (at most every _AUTH_LOG_EVERY seconds per upstream)."""
    counters = deps.counters
    refused = counters.auth_refused[exc.upstream] = counters.auth_refused.get(exc.upstream, 0) + 1
    deps.metrics.upstream_auth_failure(exc.upstream, exc.status)
    now = deps.clock.monotonic()
    logged = counters.auth_logged.get(exc.upstream)
    if logged is None or now - logged >= _AUTH_LOG_EVERY:
        counters.auth_logged[exc.upstream] = now
        log.error(
            "upstream %r refused the gateway's credentials with %d (request %s; %d such answer(s) since start); it said: %s",
            exc.upstream,
            exc.status,
            ctx.request_id,
            refused,
            exc.upstream_text,
        )


def _queue_error(model: ModelRoute, exc: QueueRefused, deadline: float, status: int) -> UpstreamError:
    if exc.reason == "full":
        message = f"model {model.name!r}: every deployment is at its concurrency limit and the queue is full"
    else:
        message = f"model {model.name!r}: every deployment stayed at its concurrency limit for the {deadline:g}s the request may wait"
    retry = {"Retry-After": str(max(1, math.ceil(deadline)))}
    if status == 429:
        return QueueRateLimited(message, retry)
    return UpstreamUnavailable(
        message, code="queue_timeout" if exc.reason == "deadline" else "queue_full", headers=retry
    )


def dead_letter(
    ctx: RequestContext,
    deps: RouteDeps,
    trail: list[dict[str, Any]] | None,
    status: int,
    code: str | None,
    message: str,
) -> None:
    """The failed request's metadata in the dead-letter log, and a warning."""
    deps.dead_letters.add(
        request_id=ctx.request_id,
        tenant=tenant_of(ctx),
        model=ctx.model,
        endpoint=ctx.endpoint.path if ctx.endpoint is not None else "",
        stream=ctx.stream,
        status=status,
        code=code,
        message=message,
        attempts=trail or [],
    )
    log.warning("request %s for %r failed after %d attempt(s): %s", ctx.request_id, ctx.model, ctx.attempts, message)
