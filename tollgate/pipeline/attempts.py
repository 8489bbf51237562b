"""The attempt loop: deployments × retries × fallbacks for one request, until one attempt serves it or none can.

Order of things for a request of model M (chain: M, then its fallbacks depth-first):

* the balancing strategy picks a deployment of the current model whose breaker
  admits the call and that is healthy, not cooling after a 429, under its
  rpm/tpm and under its max_concurrency (or, if the model allows queueing and
  that is the only obstacle, waits in that deployment's fair queue);
* a retryable failure (connect error, timeout, a status in ``retries.statuses``,
  a stream that broke before its first event) moves to another untried
  deployment of the same model, then to the next model of the chain, and, with
  no model left, round again on the same one after an exponential backoff with
  full jitter (an upstream ``Retry-After`` up to ``retry_after_cap`` is waited
  out; a longer one keeps that deployment out of rotation until then);
* an upstream refusing the gateway's own credential (401, 403) is that
  deployment's failure: logged at error level with the provider's text,
  counted, and tried on the other deployments and fallbacks, never round again;
  the tenant gets a 502 ``upstream_auth_error`` in the gateway's words;
* a status in the model's ``fallback_on_status`` goes to the next model at once;
  a context-length error goes down the model's ``context_window_fallbacks``;
* a model none of whose deployments can take the request costs no attempt: the
  chain moves on without waiting, so "everything down" is a 503 at once.

Bounds: at most ``1 + retries.max`` attempts per request, fallback hops
included; a retry on the same model also needs the gateway-wide retry budget
(a hop to another model does not: it spares the failing provider). Nothing is
retried once a byte reached the client (``forward`` guarantees it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Any

from tollgate.edge import server as httpserver
from tollgate.edge.answers import REQUEST_ID_HEADER, status_for
from tollgate.errors import (
    GatewayError,
    RateLimited,
    UpstreamAuthError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollgate.pipeline.context import RequestContext
from tollgate.pipeline.forward import MODEL_HEADER, forward
from tollgate.routing.models import ModelRoute, route
from tollgate.routing.slot_queue import QueueRefused

__all__ = ["AttemptCounters", "serve"]

log = logging.getLogger("tollgate.attempts")

_CONTEXT_MARKERS = (b"context_length_exceeded", b"maximum context length")
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


async def serve(ctx: RequestContext, state: Any) -> httpserver.StreamResponse | httpserver.Response:
    """Route the request and forward it, retrying and falling back as the config allows."""
    first = route(ctx, ctx.runtime.routes)
    state.shedder.admit(ctx.priority)
    res = ctx.runtime.config.resilience
    policy = res.retries
    clock = state.clock
    counters: AttemptCounters = state.counters
    counters.requests += 1
    state.retry_budget.request()
    pool = state.pool.clients
    max_attempts = policy.max + 1
    tokens = len(ctx.body_bytes) >> 2  # a rough prompt estimate for deployments with a tpm limit

    current: ModelRoute = first
    chain = _allowed(ctx, first.fallbacks)
    hop = 0  # next index in chain
    if chain and state.proactive.diverted(first.name):
        current, hop = chain[0], 1
    if state.hotspots.policy.enabled:
        state.hotspots.hit(_tenant(ctx), first.name)
    tried = 0  # bit mask of the current model's deployments tried in this round
    rounds = 0  # rounds over the current model after the first
    start = current.start()
    paid = True  # the next attempt needs no retry budget (the first, a fallback hop, or a paid round)
    last: UpstreamError | None = None
    trail: list[dict[str, Any]] | None = None  # only built once something fails
    spins = 0

    while spins < 64:
        spins += 1
        now = clock.monotonic()
        j = current.pick(start, tried, now, tokens)
        queue_wait = False
        if j < 0:
            j = current.queue_pick(tried, now, tokens)
            queue_wait = j >= 0
        if j < 0:
            # Nothing (more) of this model can take the request now: the next model, or this one again.
            if hop < len(chain):
                current, hop, tried, rounds, paid = chain[hop], hop + 1, 0, 0, True
                start = current.start()
                continue
            if not (tried and last is not None and _retryable(last, policy) and ctx.attempts < max_attempts):
                break
            if not paid and not _spend_retry(ctx, state, current):
                break
            rounds += 1
            delay = _backoff(policy, rounds, last)
            if asyncio.get_running_loop().time() + delay >= ctx.started + current.total_timeout:
                break
            await asyncio.sleep(delay)
            tried, paid = 0, True
            continue
        if ctx.attempts >= max_attempts:
            break
        if not paid and not _spend_retry(ctx, state, current):
            if hop < len(chain):  # a hop to another model spares the failing provider
                current, hop, tried, rounds, paid = chain[hop], hop + 1, 0, 0, True
                start = current.start()
                continue
            break
        paid = True
        tried |= 1 << j
        dstate = current.states[j]
        deployment = current.deployments[j]
        client = pool.get(deployment.upstream)
        if client is None or client.http is None:  # only while a reload swaps the pool
            last = UpstreamUnavailable(f"upstream {deployment.upstream!r} is not available")
            continue
        queue = dstate.queue
        if queue_wait:
            assert queue is not None
            try:
                await queue.acquire(_tenant(ctx), ctx.priority, asyncio.get_running_loop().time() + res.queue.deadline)
            except QueueRefused as exc:
                counters.queue_refused += 1
                last = _queue_error(current, exc, res.queue.deadline, res.queue.status)
                trail = _note(trail, current, deployment.upstream, last.code or "queue", exc.waited)
                if hop < len(chain):
                    current, hop, tried, rounds, paid = chain[hop], hop + 1, 0, 0, True
                    start = current.start()
                    continue
                break
        elif queue is not None:
            queue.try_acquire()  # pick() saw a free slot, and nothing awaited since
        permit = dstate.breaker.acquire()
        if not permit:  # the half-open probes were taken while we queued
            if queue is not None:
                queue.release()
            continue
        ctx.attempts += 1
        counters.attempts += 1
        paid = False
        ctx.model_served = current.name
        if current is not first:
            ctx.fallback_from = first.name
        if dstate.rpm is not None:
            dstate.rpm.add(now)
        if dstate.tpm is not None:
            dstate.tpm.add(now, tokens)
        dstate.inflight += 1
        dstate.calls += 1
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            response = await forward(ctx, deployment, client, current.divert)
        except UpstreamError as exc:
            last = exc
            if isinstance(exc, UpstreamAuthError):
                _auth_refused(ctx, state, exc)
            _record_failure(dstate, permit, exc, clock.monotonic())
            state.proactive.observe(current.name, True, 0.0)
            trail = _note(trail, current, deployment.upstream, _outcome(exc), loop.time() - began)
            verdict = _judge(exc, current, policy)
            if verdict == "relay":
                break
            if verdict == "context":
                chain, hop = _allowed(ctx, current.context_fallbacks), 0
            if verdict != "retry":
                if hop >= len(chain):
                    break
                current, hop, tried, rounds, paid = chain[hop], hop + 1, 0, 0, True
                start = current.start()
            continue
        except asyncio.CancelledError:
            dstate.breaker.abandon(permit)
            raise
        finally:
            dstate.inflight -= 1
            if queue is not None:
                queue.release()
        # Served. A stream may still have broken after its first event: that is the deployment's failure too.
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
        state.proactive.observe(current.name, broke, ttfb)
        if current is not first:
            key = f"{first.name}->{current.name}"
            counters.fallbacks[key] = counters.fallbacks.get(key, 0) + 1
        if broke:
            trail = _note(trail, current, deployment.upstream, error or "", loop.time() - began)
            _dead_letter(ctx, state, trail, 200, error, "the stream broke after its first event")
        return response

    return _give_up(ctx, state, first, current, last, trail)


def _allowed(ctx: RequestContext, chain: tuple[ModelRoute, ...]) -> tuple[ModelRoute, ...]:
    """A fallback never serves a tenant a model it may not use."""
    principal = ctx.principal
    if not chain or principal is None or principal.allowed_models is None:
        return chain
    return tuple(m for m in chain if principal.may_use(m.name))


def _tenant(ctx: RequestContext) -> str:
    principal = ctx.principal
    return principal.tenant if principal is not None else ctx.client_ip


def _retryable(exc: UpstreamError, policy: Any) -> bool:
    if isinstance(exc, UpstreamAuthError):
        return False  # the same credential would be refused again
    if isinstance(exc, UpstreamStatus):
        return exc.status in policy.statuses
    if isinstance(exc, UpstreamTimeout):
        return bool(policy.on_timeout)
    if exc.code == "upstream_connect_error":
        return bool(policy.on_connect_error)
    return True  # a broken or empty stream, a malformed first event, a reset connection


def _judge(exc: UpstreamError, current: ModelRoute, policy: Any) -> str:
    """What to do after a failed attempt: "retry", "fallback", "context" or "relay" (give up, answer as is)."""
    if isinstance(exc, UpstreamStatus):
        if exc.status == 400 and current.context_fallbacks and any(m in exc.body for m in _CONTEXT_MARKERS):
            return "context"
        if exc.status in current.fallback_on_status:
            return "fallback"
    if isinstance(exc, UpstreamAuthError):  # another deployment has another credential
        return "fallback" if exc.status in current.fallback_on_status else "retry"
    return "retry" if _retryable(exc, policy) else "relay"


def _record_failure(dstate: Any, permit: int, exc: UpstreamError, now: float) -> None:
    if isinstance(exc, UpstreamStatus):
        if exc.retry_after:  # the provider asked us to stay away this long
            dstate.cooling_until = max(dstate.cooling_until, now + exc.retry_after)
        if exc.status == 429:  # its rate limit, not a fault: the breaker does not count it
            dstate.breaker.abandon(permit)
            return
        if exc.status < 500:
            dstate.breaker.success(permit)  # the deployment works; the request was refused on its merits
            return
    dstate.failures += 1
    dstate.breaker.failure(permit, exc.message)


def _auth_refused(ctx: RequestContext, state: Any, exc: UpstreamAuthError) -> None:
    """Count it, and tell the operator in the provider's words (at most every _AUTH_LOG_EVERY seconds per upstream)."""
    counters: AttemptCounters = state.counters
    refused = counters.auth_refused[exc.upstream] = counters.auth_refused.get(exc.upstream, 0) + 1
    state.accounting.metrics.upstream_auth_failure(exc.upstream, exc.status)
    now = state.clock.monotonic()
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


def _outcome(exc: UpstreamError) -> str:
    return (
        f"status {exc.status}"
        if isinstance(exc, (UpstreamStatus, UpstreamAuthError))
        else (exc.code or type(exc).__name__)
    )


def _spend_retry(ctx: RequestContext, state: Any, current: ModelRoute) -> bool:
    if state.retry_budget.try_retry():
        state.counters.retries += 1
        return True
    state.counters.budget_refused += 1
    log.info("request %s: retry budget exhausted, not retrying %s", ctx.request_id, current.name)
    return False


def _backoff(policy: Any, rounds: int, last: UpstreamError | None) -> float:
    """Full jitter over an exponential step; an upstream Retry-After within the cap is waited out."""
    delay = random.uniform(0.0, min(policy.backoff_cap, policy.backoff_base * (2 ** (rounds - 1))))
    if isinstance(last, UpstreamStatus) and last.retry_after is not None and last.retry_after <= policy.retry_after_cap:
        delay = max(delay, last.retry_after)
    return delay


def _note(
    trail: list[dict[str, Any]] | None, model: ModelRoute, upstream: str, outcome: str, seconds: float
) -> list[dict[str, Any]]:
    if trail is None:
        trail = []
    trail.append({"model": model.name, "upstream": upstream, "outcome": outcome, "seconds": round(seconds, 4)})
    return trail


def _queue_error(model: ModelRoute, exc: QueueRefused, deadline: float, status: int) -> UpstreamError:
    if exc.reason == "full":
        message = f"model {model.name!r}: every deployment is at its concurrency limit and the queue is full"
    else:
        message = f"model {model.name!r}: every deployment stayed at its concurrency limit for the {deadline:g}s the request may wait"
    retry = {"Retry-After": str(max(1, math.ceil(deadline)))}
    if status == 429:
        return _QueueRateLimited(message, retry)
    return UpstreamUnavailable(
        message, code="queue_timeout" if exc.reason == "deadline" else "queue_full", headers=retry
    )


class _QueueRateLimited(UpstreamUnavailable):
    """A queue refusal the config wants answered 429: carried as an upstream error, raised as RateLimited."""

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message, code="queue_timeout", headers=headers)


def _give_up(
    ctx: RequestContext,
    state: Any,
    first: ModelRoute,
    current: ModelRoute,
    last: UpstreamError | None,
    trail: list[dict[str, Any]] | None,
) -> httpserver.StreamResponse | httpserver.Response:
    """No attempt served the request: relay the last upstream answer, or raise the reason."""
    state.counters.failed += 1
    exc: GatewayError
    if isinstance(last, UpstreamStatus):
        ctx.status = last.status
        ctx.error = f"upstream_status_{last.status}"
        _dead_letter(ctx, state, trail, last.status, ctx.error, str(last))
        headers = {
            "Content-Type": last.content_type or "application/json",
            REQUEST_ID_HEADER: ctx.request_id,
            MODEL_HEADER: current.name,
        }
        if last.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(last.retry_after))
            headers["retry-after-ms"] = str(round(last.retry_after * 1000))
        return httpserver.Response(last.status, last.body, headers)
    if isinstance(last, _QueueRateLimited):
        exc = RateLimited(last.message, code=last.code, headers=last.headers)
    elif last is not None and last.code in ("queue_timeout", "queue_full"):
        exc = last
    elif last is None or (isinstance(last, UpstreamUnavailable) and not ctx.attempts):
        exc = _unavailable(ctx, state, first, last)
    else:
        exc = last
    _dead_letter(ctx, state, trail, status_for(exc), exc.code, exc.message)
    raise exc


def _unavailable(ctx: RequestContext, state: Any, first: ModelRoute, last: UpstreamError | None) -> UpstreamUnavailable:
    now = state.clock.monotonic()
    tokens = len(ctx.body_bytes) >> 2
    reasons = []
    soonest = 0.0
    for model in (first, *first.fallbacks):
        why, wait = model.unavailable_reason(now, tokens)
        reasons.append(why)
        if wait and (not soonest or wait < soonest):
            soonest = wait
    detail = "; ".join(reasons)
    if last is not None:
        detail = f"{last.message}; {detail}"
    headers = {"Retry-After": str(max(1, math.ceil(soonest)))} if soonest else {}
    return UpstreamUnavailable(
        f"no deployment can serve {first.name!r} now: {detail}", code="no_healthy_deployment", headers=headers
    )


def _dead_letter(
    ctx: RequestContext, state: Any, trail: list[dict[str, Any]] | None, status: int, code: str | None, message: str
) -> None:
    state.dead_letters.add(
        request_id=ctx.request_id,
        tenant=_tenant(ctx),
        model=ctx.model,
        endpoint=ctx.endpoint.path if ctx.endpoint is not None else "",
        stream=ctx.stream,
        status=status,
        code=code,
        message=message,
        attempts=trail or [],
    )
    log.warning("request %s for %r failed after %d attempt(s): %s", ctx.request_id, ctx.model, ctx.attempts, message)
