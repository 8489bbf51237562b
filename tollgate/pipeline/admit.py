"""Admit stage: every limit that applies, checked and consumed in one limiter call; a stream gets its usage monitor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tollgate.accounting.pricing import Pricing
from tollgate.clock import Clock
from tollgate.limiter import Limiter
from tollgate.pipeline.context import RequestContext
from tollgate.policy import admission
from tollgate.policy.admission import Admission, LimitMetrics
from tollgate.policy.lease_wait import LeaseWaiters
from tollgate.policy.rules import RuleSet
from tollgate.policy.settlement import Settler, StreamBudget
from tollgate.upstream.anthropic_usage import MessagesUsageMonitor
from tollgate.upstream.responses_usage import ResponsesUsageMonitor
from tollgate.upstream.usage import UsageMonitor, request_stream_usage

__all__ = ["AdmitDeps", "Decide", "admit"]

# What decides a request's admission: ``admission.admit``, or the same in a span when tracing is on
# (tollgate/pipeline/traces.py).
Decide = Callable[
    [RequestContext, RuleSet, Limiter, LimitMetrics, LeaseWaiters, Callable[[], Pricing], Clock],
    Awaitable[Admission | None],
]


@dataclass(frozen=True, slots=True)
class AdmitDeps:
    """The rules of the config version, and the process's limiter, lease waiters, price table and settler; what
    decides (admission.admit, traced when tracing is on)."""

    rules: RuleSet
    limiter: Limiter
    metrics: LimitMetrics
    waiters: LeaseWaiters
    pricing: Callable[[], Pricing]
    settler: Settler
    clock: Clock
    decide: Decide = admission.admit


async def admit(ctx: RequestContext, deps: AdmitDeps) -> None:
    """Set ``ctx.admission`` (refusing with 429 what a limit refuses), and arm a stream's usage monitor."""
    limiter = deps.limiter
    decided = ctx.admission = await deps.decide(
        ctx, deps.rules, limiter, deps.metrics, deps.waiters, deps.pricing, deps.clock
    )
    if decided is not None and decided.lease is not None:
        deps.settler.hold(decided.lease)
    if ctx.stream:
        budget = StreamBudget(decided, limiter) if decided is not None and decided.stream_limits else None
        assert ctx.endpoint is not None
        kind = ctx.endpoint.kind
        if kind == "messages":  # Anthropic streams always carry their usage, as Responses API streams do
            ctx.stream_monitor = MessagesUsageMonitor(ctx, budget)
        elif kind == "responses":
            ctx.stream_monitor = ResponsesUsageMonitor(ctx, budget)
        else:
            ctx.stream_monitor = UsageMonitor(ctx, request_stream_usage(ctx), budget)
