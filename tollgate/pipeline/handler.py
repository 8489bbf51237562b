"""The request pipeline: guard → identify → match → admit → route → forward → account, for one endpoint."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tollgate.edge.answers import error_answer, internal_error_answer, request_id_from, status_for
from tollgate.edge.messages import Request
from tollgate.errors import GatewayError
from tollgate.identity import client_ip, identify
from tollgate.pipeline.attempts import serve
from tollgate.pipeline.context import Endpoint, RequestContext
from tollgate.pipeline.guard import guard
from tollgate.policy.admission import admit
from tollgate.policy.settlement import StreamBudget
from tollgate.runtime.state import GatewayState
from tollgate.upstream.usage import UsageMonitor, request_stream_usage

__all__ = ["client_ip", "make_proxy_handler"]

log = logging.getLogger("tollgate.proxy")

Handler = Callable[[Request], Awaitable[Any]]


PRIORITY_HEADER = "X-Tollgate-Priority"


def _priority(ctx: RequestContext) -> int:
    """The plan's priority class, raised by the client's header only as far as the plan permits."""
    limits = ctx.principal.limits
    priority = limits.priority or 0
    ceiling = limits.max_header_priority
    if ceiling is not None:
        asked = ctx.request.headers.get(PRIORITY_HEADER)
        if asked is not None and asked.isdigit():
            priority = max(priority, min(int(asked), ceiling))
    return priority


async def _admit(ctx: RequestContext, state: GatewayState) -> None:
    """Match the namespace, admit every limit at once, and arm the stream's usage monitor."""
    runtime = ctx.runtime
    ctx.priority = _priority(ctx)
    ctx.namespace = runtime.namespaces.match(ctx.request.headers, ctx.body)
    admission = ctx.admission = await admit(
        ctx, runtime.rules, state.limiter, state.accounting.metrics, state.lease_waiters, state.accounting.pricing
    )
    if admission is not None and admission.lease is not None:
        state.settler.hold(admission.lease)
    if ctx.stream:
        budget = StreamBudget(admission, state.limiter) if admission is not None and admission.stream_limits else None
        ctx.stream_monitor = UsageMonitor(ctx, request_stream_usage(ctx), budget)


def make_proxy_handler(endpoint: Endpoint, state: GatewayState) -> Handler:
    async def handle(request: Request) -> Any:
        runtime = state.runtime
        request_id = request_id_from(request.headers.get("x-request-id"))
        loop = asyncio.get_running_loop()
        ctx = RequestContext(
            request, runtime, request_id, endpoint, loop.time(), client_ip(request, runtime.identity.proxies)
        )
        try:
            state.shedder.enter()
            await guard(ctx, runtime.config.guard)
            identify(ctx, runtime.identity, state.registry.directory)
            await _admit(ctx, state)
            return await serve(ctx, state)  # route → forward, with retries and fallbacks
        except GatewayError as exc:
            ctx.status = status_for(exc)
            ctx.error = exc.code
            return error_answer(exc, request_id)
        except asyncio.CancelledError:
            ctx.client_disconnected = not ctx.stream_complete
            raise
        except Exception:
            log.exception("unexpected error on request %s", request_id)
            ctx.status = 500
            ctx.error = "internal_error"
            return internal_error_answer(request_id)
        finally:
            state.shedder.leave()
            if ctx.admission is not None:
                state.settler.finish(ctx)
            state.accounting.record(ctx)

    return handle
