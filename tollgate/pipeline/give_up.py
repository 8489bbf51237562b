"""When no attempt served a request: the last upstream answer relayed as it was, or the reason raised, and a dead letter."""

from __future__ import annotations

import math

from tollgate.edge.answers import REQUEST_ID_HEADER, Response, status_for
from tollgate.errors import GatewayError, RateLimited, UpstreamError, UpstreamStatus, UpstreamUnavailable
from tollgate.pipeline.forward import MODEL_HEADER
from tollgate.pipeline.route import QueueRateLimited, Walk, dead_letter
from tollgate.routing.models import ModelRoute

__all__ = ["give_up"]


def give_up(walk: Walk) -> Response:
    """Relay the last upstream answer, or raise the reason no attempt served the request."""
    ctx, deps, last = walk.ctx, walk.deps, walk.last
    deps.counters.failed += 1
    exc: GatewayError
    if isinstance(last, UpstreamStatus):
        ctx.status = last.relay_status
        ctx.error = f"upstream_status_{last.status}"
        dead_letter(ctx, deps, walk.trail, last.relay_status, ctx.error, str(last))
        headers = {
            "Content-Type": last.content_type or "application/json",
            REQUEST_ID_HEADER: ctx.request_id,
            MODEL_HEADER: walk.current.name,
        }
        if last.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(last.retry_after))
            headers["retry-after-ms"] = str(round(last.retry_after * 1000))
        return Response(last.relay_status, last.body, headers)
    if isinstance(last, QueueRateLimited):
        exc = RateLimited(last.message, code=last.code, headers=last.headers)
    elif last is not None and last.code in ("queue_timeout", "queue_full"):
        exc = last
    elif last is None or (isinstance(last, UpstreamUnavailable) and not ctx.attempts):
        exc = _unavailable(walk, walk.first, last)
    else:
        exc = last
    dead_letter(ctx, deps, walk.trail, status_for(exc), exc.code, exc.message)
    raise exc


def _unavailable(walk: Walk, first: ModelRoute, last: UpstreamError | None) -> UpstreamUnavailable:
    """Why no deployment of the model or its fallbacks can serve it now, and when one might."""
    now = walk.deps.clock.monotonic()
    tokens = walk.tokens
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
