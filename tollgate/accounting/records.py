"""What accounting keeps of a request: a flat record taken on the hot path, turned into an :class:`Entry` off it.

The record is a plain tuple, built by the account stage (tollgate/pipeline/account.py)
with attribute reads only; accounting never sees the request itself. Its fields, in order:

    request_id, endpoint, model, model_served, upstream, status, error, stream,
    client_disconnected, client_ip, started, first_byte_at, finished_at, usage,
    body_len, principal, end_user, namespace, upstream_started, attempts, end, wall,
    deployment[, cache_hit]

``endpoint`` has a ``kind``; ``usage`` (or None) has ``prompt_tokens``,
``completion_tokens``, ``reported``, and the parts ``cached_tokens``,
``cache_write_tokens`` (of the prompt) and ``reasoning_tokens`` (of the
completion); ``principal`` (or None) has
``tenant``, ``key_id`` and ``plan``; ``deployment`` (or None: nothing was
sent upstream) has the ``model`` name the upstream was sent and its ``provider``. ``started``, ``first_byte_at``,
``finished_at``, ``upstream_started`` and ``end`` are times of one clock (the
event loop's); ``wall`` is when the request ended, in seconds since the epoch.
``cache_hit`` is there only for a request answered from the response cache
(tollgate/pipeline/cache.py): it has the ``prompt_tokens`` and
``completion_tokens`` of the answer it replayed and the ``charge_nanos`` it is
billed. Such a request used no tokens: its entry counts none, costs the charge,
and says what it saved (the replayed answer's tokens, and their cost at the
model's prices).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

__all__ = ["DISCONNECTED_STATUS", "Entry", "Fields", "Record", "astuple", "entry_from", "fields_of"]

Record = tuple[Any, ...]
"""One request as the account stage records it: the fields listed above, in that order."""

Fields = tuple[Any, ...]
"""The fields of an :class:`Entry` in declaration order, as :func:`fields_of` gives them."""

# Status recorded for a request whose client went away before the answer was complete (nginx's convention).
DISCONNECTED_STATUS = 499


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
    # Who served: the upstream's provider and the model name it was sent (the deployment's).
    provider: str | None
    deployment_model: str | None
    status: int
    error: str | None
    stream: bool
    client_disconnected: bool
    client_ip: str
    prompt_tokens: int
    completion_tokens: int
    # Parts of prompt_tokens read from and written to the provider's prompt cache (each billed at its own price),
    # and the part of completion_tokens spent reasoning.
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_reported: bool
    cost_nanos: int
    total_s: float
    upstream_s: float
    overhead_s: float
    ttfb_s: float | None
    attempts: int | None
    principal: Any
    # Answered from the response cache: the tokens of the answer it replayed and their cost at the model's prices.
    cache_hit: bool = False
    saved_tokens: int = 0
    saved_cost_nanos: int = 0


_FIELDS_OF_ENTRY = attrgetter(*(f.name for f in fields(Entry)))


def astuple(e: Entry) -> Fields:
    """The fields of ``e`` in declaration order (what :func:`fields_of` gave for it), not copied."""
    return _FIELDS_OF_ENTRY(e)


def _name(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "name", None) or str(value)


def entry_from(rec: Record, pricing: Any) -> Entry:
    """Derive latencies, usage and cost from a record (runs in the flusher)."""
    return Entry(*fields_of(rec, pricing))


def fields_of(rec: Record, pricing: Any) -> tuple[Any, ...]:
    """The fields of the :class:`Entry` of ``rec``, in declaration order, as a plain tuple.

    The flusher reads the few it needs from the tuple and builds the
    :class:`Entry` (``Entry(*fields)``) only for the records an access-log
    line or a security check asks for: the derivation is written once, here.
    """
    if len(rec) == 23:
        hit = None
    else:  # a cache hit's record carries the hit last
        hit = rec[23]
        rec = rec[:23]
    # The times the derivation computes with, declared floats: compiled, their arithmetic is native (a time of a
    # record is a float, or an int, which a float accepts).
    started: float
    end: float
    upstream_s: float
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
        deployment,
    ) = rec
    total = end - started
    if total < 0.0:
        total = 0.0
    if hit is not None:  # answered by the gateway itself: no upstream time
        upstream_s = 0.0
    elif finished_at is not None:
        # Without the time the upstream call started, everything before the answer ended counts as upstream:
        # the overhead is then a lower bound (the gateway's work after the upstream answered).
        upstream_s = finished_at - (started if upstream_started is None else upstream_started)
        if not upstream_s > 0.0:  # what max(0.0, ...) gives, without the call
            upstream_s = 0.0
    else:
        upstream_s = 0.0
    if upstream_s > total:
        upstream_s = total
    cached = cache_write = reasoning = 0
    if usage is not None:
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        reported = True if usage.reported else False  # noqa: SIM210 - bool(...) without the call
        cached, cache_write, reasoning = usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens
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
    provider = deployment_model = None
    if deployment is not None:
        provider, deployment_model = deployment.provider, deployment.model
    # pricing.priced_model(model_served, model, deployment_model), written out (None is never a name)
    named = pricing.named
    if deployment_model in named:
        priced = deployment_model
    elif model_served in named:
        priced = model_served
    else:
        priced = model if model is not None else model_served
    saved_tokens = saved_cost = 0
    if hit is not None:
        cost = hit.charge_nanos
        saved_tokens = hit.prompt_tokens + hit.completion_tokens
        saved_cost = pricing.cost_nanos(priced, hit.prompt_tokens, hit.completion_tokens)
    elif status < 400 or prompt or completion:
        if cached or cache_write:
            cost = pricing.cost_nanos(priced, prompt, completion, cached_tokens=cached, cache_write_tokens=cache_write)
        else:  # the usual case: a model priced by its tokens alone is priced here, as cost_nanos does
            rate = pricing.plain.get(priced)
            if rate is None and priced not in named:  # a name without a price of its own: the default price
                rate = pricing.plain_unnamed
            if rate is None:
                cost = pricing.cost_nanos(priced, prompt, completion)
            else:
                cost = round(prompt * rate[0] + completion * rate[1])
    else:
        cost = 0
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
        provider,
        deployment_model,
        status,
        error,
        stream,
        disconnected,
        client_ip,
        prompt,
        completion,
        cached,
        cache_write,
        reasoning,
        reported,
        cost,
        total,
        upstream_s,
        total - upstream_s,
        (first_byte_at - started) if first_byte_at is not None else None,
        attempts,
        principal,
        hit is not None,
        saved_tokens,
        saved_cost,
    )
