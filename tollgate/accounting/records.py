"""What the accounting stage keeps of a request: a flat tuple taken on the hot path, turned into an :class:`Entry` off it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollgate.pipeline.context import RequestContext

__all__ = ["DISCONNECTED_STATUS", "Entry", "capture", "entry_from", "fields_of"]

# Status recorded for a request whose client went away before the answer was complete (nginx's convention).
DISCONNECTED_STATUS = 499


def capture(ctx: RequestContext, end: float, wall: float) -> tuple[Any, ...]:
    """The fields of ``ctx`` accounting needs, read once: attribute reads only, no computation (the hot path).

    The context itself is not kept: it holds the request and its body, which
    must not live until the next flush. Fields other stages are still adding
    (principal, end_user, namespace, upstream_started, attempts) are read when present.
    """
    return (
        ctx.request_id,
        ctx.endpoint,
        ctx.model,
        ctx.model_served,
        ctx.upstream_name,
        ctx.status,
        ctx.error,
        ctx.stream,
        ctx.client_disconnected,
        ctx.client_ip,
        ctx.started,
        ctx.first_byte_at,
        ctx.finished_at,
        ctx.usage,
        len(ctx.body_bytes),
        getattr(ctx, "principal", None),
        getattr(ctx, "end_user", None),
        getattr(ctx, "namespace", None),
        getattr(ctx, "upstream_started", None),
        getattr(ctx, "attempts", None),
        end,
        wall,
    )


@dataclass(slots=True)
class Entry:
    """One request as accounting reports it (access log line, metrics, aggregates)."""

    request_id: str
    wall: float
    tenant: str
    key_id: str | None
    # The end user inside the tenant (identity/end_user.py): the JWT's user claim, the body's user or a header.
    user: str | None
    plan: str | None
    namespace: str | None
    endpoint: str | None
    model: str | None
    model_served: str | None
    priced_model: str | None
    upstream: str | None
    status: int
    error: str | None
    stream: bool
    client_disconnected: bool
    client_ip: str
    prompt_tokens: int
    completion_tokens: int
    usage_reported: bool
    cost_nanos: int
    total_s: float
    upstream_s: float
    overhead_s: float
    ttfb_s: float | None
    attempts: int | None
    principal: Any


def _name(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "name", None) or str(value)


def entry_from(rec: tuple[Any, ...], pricing: Any) -> Entry:
    """Derive latencies, usage and cost from a captured tuple (runs in the flusher)."""
    return Entry(*fields_of(rec, pricing))


def fields_of(rec: tuple[Any, ...], pricing: Any) -> tuple[Any, ...]:
    """The fields of the :class:`Entry` of ``rec``, in declaration order, as a plain tuple.

    The flusher reads the few it needs from the tuple and builds the
    :class:`Entry` (``Entry(*fields)``) only for the records an access-log
    line or a security check asks for: the derivation is written once, here.
    """
    (
        request_id,
        endpoint,
        model,
        model_served,
        upstream,
        status,
        error,
        stream,
        disconnected,
        client_ip,
        started,
        first_byte_at,
        finished_at,
        usage,
        body_len,
        principal,
        end_user,
        namespace,
        upstream_started,
        attempts,
        end,
        wall,
    ) = rec
    total = end - started
    if total < 0.0:
        total = 0.0
    if upstream_started is not None and finished_at is not None:
        upstream_s = max(0.0, finished_at - upstream_started)
    elif finished_at is not None:
        # Without the time the upstream call started, everything before the answer ended counts as upstream:
        # the overhead is then a lower bound (the gateway's work after the upstream answered).
        upstream_s = max(0.0, finished_at - started)
    else:
        upstream_s = 0.0
    if upstream_s > total:
        upstream_s = total
    if usage is not None:
        prompt, completion, reported = usage.prompt_tokens, usage.completion_tokens, bool(usage.reported)
    elif upstream is not None and first_byte_at is not None and (status == 200 or disconnected):
        # The pipeline gave no usage although the upstream worked: estimate the prompt (~4 bytes a token) and say so.
        prompt, completion, reported = max(1, body_len // 4), 0, False
    else:
        prompt, completion, reported = 0, 0, True
    if disconnected and status < 400:
        status = DISCONNECTED_STATUS
    if principal is not None:
        tenant, key_id, plan = principal.tenant, principal.key_id, principal.plan
    else:
        tenant, key_id, plan = "anonymous", None, None
    priced = pricing.priced_model(model_served, model)
    cost = pricing.cost_nanos(priced, prompt, completion) if status < 400 or prompt or completion else 0
    if attempts is not None and not isinstance(attempts, int):
        attempts = len(attempts)
    if namespace is not None and not isinstance(namespace, str):
        namespace = _name(namespace)
    return (
        request_id,
        wall,
        tenant,
        key_id,
        end_user,
        plan,
        namespace,
        endpoint.kind if endpoint is not None else None,
        model,
        model_served,
        priced,
        upstream,
        status,
        error,
        stream,
        disconnected,
        client_ip,
        prompt,
        completion,
        reported,
        cost,
        total,
        upstream_s,
        total - upstream_s,
        (first_byte_at - started) if first_byte_at is not None else None,
        attempts,
        principal,
    )
