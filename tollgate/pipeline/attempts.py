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

Like the forward stage it answers: ``serve(ctx, deps)`` returns the answer (or
raises why there is none). The walk down the chain and one attempt are in
tollgate/pipeline/route.py, the judgement of a failure in
tollgate/routing/verdicts.py, the answer when nothing served in
tollgate/pipeline/give_up.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Final

import orjson

from tollgate.errors import BadRequest, UpstreamError
from tollgate.pipeline.context import RequestContext
from tollgate.pipeline.forward import Answer
from tollgate.pipeline.give_up import give_up
from tollgate.pipeline.route import RouteDeps, Walk, tenant_of
from tollgate.routing.models import route
from tollgate.upstream.response_ids import stored_response

__all__ = ["serve"]

# Turns of the loop at most (picks, hops and rounds included): a bound on a request's work, whatever happens.
_MAX_TURNS: Final = 64


def serve(ctx: RequestContext, deps: RouteDeps) -> Awaitable[Answer]:
    """Route the request and forward it, retrying and falling back as the config allows (awaited by the caller:
    what refuses the request before any attempt raises here, at once)."""
    first = route(ctx.model, deps.routes)
    if ctx.body is not None and "previous_response_id" in ctx.body:
        continue_stored(ctx)
    deps.shedder.admit(ctx.priority)
    deps.counters.requests += 1
    deps.retry_budget.request()
    if deps.hotspots.policy.enabled:
        deps.hotspots.hit(tenant_of(ctx), first.name)
    return _walk(Walk(ctx, deps, first))


async def _walk(walk: Walk) -> Answer:
    """The attempts, until one answers or none is left. One attempt's steps are Walk's (see Walk.reach); the
    forward stage is awaited here, so that a request's resumptions pass through as few coroutines as may be."""
    ctx, deps = walk.ctx, walk.deps
    forward, clock = deps.forward, deps.clock
    for _ in range(_MAX_TURNS):
        j = walk.pick()
        if j < 0:  # nothing (more) of this model can take the request now: the next model, or this one again
            if walk.fall_back() or await walk.again():
                continue
            break
        if ctx.attempts >= walk.max_attempts:
            break
        if not walk.paid and not walk.spend_retry():  # no budget: a hop to another model spares the failing provider
            if walk.fall_back():
                continue
            break
        if not walk.reach(j) or (walk.queued and not await walk.wait_for_slot(j)) or not walk.begin(j):
            if walk.stopped:
                break
            continue
        client = walk.client
        deployment = ctx.deployment
        assert client is not None and deployment is not None
        try:
            answer: Answer | None = await forward(ctx, clock, deployment, client, walk.current.divert)
        except UpstreamError as exc:
            walk.failed(exc)
            answer = None
        except asyncio.CancelledError:
            walk.abandon()
            raise
        finally:
            walk.finish()
        if answer is not None:
            walk.served()
            return answer
        if walk.stopped:
            break
    return give_up(walk)


def continue_stored(ctx: RequestContext) -> None:
    """A Responses API request that continues a stored response: the upstream's id sent, the request pinned to the
    upstream that stores it (tollgate/upstream/response_ids.py). Another tenant's id is unknown to this one."""
    assert ctx.body is not None
    ref = stored_response(ctx.body["previous_response_id"])
    if ref is None:  # not one of ours: the upstream judges it
        return
    if ctx.principal is None or ref.tenant != ctx.principal.tenant:
        raise BadRequest(
            "previous response not found", param="previous_response_id", code="previous_response_not_found"
        )
    ctx.body["previous_response_id"] = ref.id
    ctx.body_bytes = orjson.dumps(ctx.body)
    ctx.pinned_upstream = ref.upstream
