"""Spans of one request, when tracing is on: the server span, a child for admission, a child per upstream attempt.

They follow OpenTelemetry's GenAI semantic conventions: the server span is named
``{gen_ai.operation.name} {gen_ai.request.model}`` (``chat gpt-4o-mini``) and carries the operation, the
model asked for and the model that answered, the provider, the tokens used, the HTTP status and the error
type, with the gateway's own ``tollgate.tenant`` and ``tollgate.request_id``. Each attempt is a CLIENT span
named after the model it asked the provider for: a retry and a fallback are spans of their own, with their
deployment's upstream and model. A stream's spans end when the stream does (its tokens are known then).

Tracing off costs the request nothing here: the handler reads ``stages.tracing`` once, and the admission and
attempt calls are fields of their stage's dependencies (``AdmitDeps.decide``, ``RouteDeps.forward``) that
:func:`with_tracing` replaces by traced ones only when tracing is on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextvars import Token
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from tollgate.accounting.pricing import Pricing
from tollgate.accounting.tracing import Tracing
from tollgate.clock import Clock
from tollgate.config.model import Deployment
from tollgate.errors import GatewayError, UpstreamError
from tollgate.limiter import Limiter
from tollgate.pipeline.admit import Decide
from tollgate.pipeline.context import RequestContext
from tollgate.pipeline.forward import Answer
from tollgate.pipeline.handler import Stages
from tollgate.pipeline.route import Forward
from tollgate.policy.admission import Admission, LimitMetrics
from tollgate.policy.lease_wait import LeaseWaiters
from tollgate.policy.rules import RuleSet
from tollgate.upstream.pool import UpstreamClient

__all__ = ["OPERATIONS", "PROVIDERS", "RequestSpan", "RequestTracing", "with_tracing"]

# gen_ai.operation.name of each endpoint kind: the conventions' well-known names, the gateway's own beyond them.
OPERATIONS = {
    "chat": "chat",
    "completion": "text_completion",
    "embedding": "embeddings",
    "responses": "chat",
    "messages": "chat",
    "count_tokens": "count_tokens",
    "image": "generate_content",
    "speech": "generate_content",
    "transcription": "generate_content",
    "moderation": "moderation",
}
# gen_ai.provider.name of each upstream provider (the conventions' well-known values).
PROVIDERS = {"openai": "openai", "azure": "azure.ai.openai", "anthropic": "anthropic"}


def _operation(ctx: RequestContext) -> str:
    endpoint = ctx.endpoint
    return "http" if endpoint is None else OPERATIONS.get(endpoint.kind, endpoint.kind)


class RequestSpan:
    """The server span of one request, current in its task until :meth:`end`."""

    __slots__ = ("span", "token", "operation")

    def __init__(self, span: trace.Span, token: Token[Context], operation: str) -> None:
        self.span = span
        self.token = token
        self.operation = operation

    def end(self, ctx: RequestContext) -> None:
        """Name the span after the model, set what the request ended with, and end it."""
        span = self.span
        context.detach(self.token)
        if span.is_recording():
            if ctx.model:
                span.update_name(f"{self.operation} {ctx.model}")
            span.set_attributes(_ended(ctx))
            status = ctx.status
            if status >= 500 or (ctx.error is not None and status == 0):
                span.set_status(Status(StatusCode.ERROR))
        span.end()


def _ended(ctx: RequestContext) -> dict[str, Any]:
    """The attributes known once a request ended."""
    attributes: dict[str, Any] = {"http.response.status_code": ctx.status, "tollgate.attempts": ctx.attempts}
    if ctx.model:
        attributes["gen_ai.request.model"] = ctx.model
    if ctx.model_served:
        attributes["gen_ai.response.model"] = ctx.model_served
    deployment = ctx.deployment
    if deployment is not None:
        attributes["gen_ai.provider.name"] = PROVIDERS.get(deployment.provider, deployment.provider)
        attributes["tollgate.upstream"] = deployment.upstream
    principal = ctx.principal
    if principal is not None:
        attributes["tollgate.tenant"] = principal.tenant
        attributes["tollgate.plan"] = principal.plan
    attributes["tollgate.namespace"] = ctx.namespace
    if ctx.fallback_from is not None:
        attributes["tollgate.fallback_from"] = ctx.fallback_from
    usage = ctx.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if ctx.client_disconnected:
        attributes["error.type"] = "client_disconnected"
    elif ctx.error is not None:
        attributes["error.type"] = ctx.error
    elif ctx.status >= 400:
        attributes["error.type"] = str(ctx.status)
    return attributes


class RequestTracing:
    """What the handler opens a request's span with (``Stages.tracing``): the process's :class:`Tracing`."""

    __slots__ = ("tracing",)

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def start(self, ctx: RequestContext) -> RequestSpan:
        return start_request(self.tracing, ctx)


def start_request(tracing: Tracing, ctx: RequestContext) -> RequestSpan:
    """Open the request's server span, as a child of the client's ``traceparent`` when it sent one, and make it
    current (the admission and attempt spans are its children; the upstream gets its context)."""
    operation = _operation(ctx)
    request = ctx.request
    span = tracing.tracer.start_span(
        operation,
        context=tracing.parent(request.headers),
        kind=SpanKind.SERVER,
        attributes={
            "gen_ai.operation.name": operation,
            "http.request.method": request.method,
            "url.path": request.path,
            "client.address": ctx.client_ip,
            "tollgate.request_id": ctx.request_id,
        },
    )
    return RequestSpan(span, context.attach(trace.set_span_in_context(span)), operation)


def _traced_decide(tracing: Tracing, decide: Decide) -> Decide:
    """Admission in a span of its own: what it decided, or why it refused."""
    tracer = tracing.tracer

    async def traced(
        ctx: RequestContext,
        rules: RuleSet,
        limiter: Limiter,
        metrics: LimitMetrics,
        waiters: LeaseWaiters,
        pricing: Callable[[], Pricing],
        clock: Clock,
    ) -> Admission | None:
        with tracer.start_as_current_span(
            "admit", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                decided = await decide(ctx, rules, limiter, metrics, waiters, pricing, clock)
            except GatewayError as exc:
                span.set_attributes({"tollgate.admission": "refused", "error.type": exc.code or type(exc).__name__})
                raise
            if decided is None:
                span.set_attribute("tollgate.admission", "no_limits")
            else:
                span.set_attributes({"tollgate.admission": "admitted", "tollgate.limits.store": decided.store})
            return decided

    return traced


def _traced_forward(tracing: Tracing, forward: Forward) -> Forward:
    """Each upstream attempt in a CLIENT span of its own, current while it runs (its context goes upstream)."""
    tracer = tracing.tracer

    async def traced(
        ctx: RequestContext, clock: Clock, deployment: Deployment, client: UpstreamClient, divert: frozenset[int]
    ) -> Answer:
        operation = _operation(ctx)
        http = client.http
        span = tracer.start_span(
            f"{operation} {deployment.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": deployment.model,
                "gen_ai.provider.name": PROVIDERS.get(deployment.provider, deployment.provider),
                "server.address": http.host if http is not None else "",
                "server.port": http.port if http is not None else 0,
                "tollgate.upstream": deployment.upstream,
                "tollgate.model": ctx.model_served or "",
                "tollgate.attempt": ctx.attempts,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            answer = await forward(ctx, clock, deployment, client, divert)
        except UpstreamError as exc:
            attributes: dict[str, Any] = {"error.type": exc.code or type(exc).__name__}
            status = getattr(exc, "status", None)
            if isinstance(status, int):
                attributes["http.response.status_code"] = status
            span.set_attributes(attributes)
            span.set_status(Status(StatusCode.ERROR, exc.message))
            raise
        except BaseException as exc:  # cancelled: the client left
            span.set_attribute("error.type", type(exc).__name__)
            raise
        else:
            attributes = {"http.response.status_code": ctx.status}
            usage = ctx.usage
            if usage is not None:
                attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
                attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if ctx.error is not None:
                attributes["error.type"] = ctx.error
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attributes)
            return answer
        finally:
            context.detach(token)
            span.end()

    return traced


def with_tracing(stages: Stages, tracing: Tracing | None) -> Stages:
    """``stages`` as they are when tracing is off; with its traced admission and attempts, and the tracer, when on."""
    if tracing is None:
        return stages
    route = dataclasses.replace(stages.route, forward=_traced_forward(tracing, stages.route.forward))
    return dataclasses.replace(
        stages,
        tracing=RequestTracing(tracing),
        admit=dataclasses.replace(stages.admit, decide=_traced_decide(tracing, stages.admit.decide)),
        route=route,
        # the response cache serves its misses through the same (traced) attempts
        cache=None if stages.cache is None else dataclasses.replace(stages.cache, route=route),
    )
