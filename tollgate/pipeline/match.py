"""Match stage: the request's namespace from the compiled matchers, and its priority class from the tenant's plan."""

from __future__ import annotations

from tollgate.pipeline.context import RequestContext
from tollgate.policy.matchers import NamespaceTable

__all__ = ["PRIORITY_HEADER", "match"]

PRIORITY_HEADER = "X-Tollgate-Priority"


def match(ctx: RequestContext, namespaces: NamespaceTable) -> None:
    """Set ``ctx.priority`` (the plan's, raised by the client's header only as far as the plan permits) and
    ``ctx.namespace`` (the first namespace whose matchers the request meets)."""
    principal = ctx.principal
    assert principal is not None  # the identify stage ran
    limits = principal.limits
    priority = limits.priority or 0
    ceiling = limits.max_header_priority
    request = ctx.request
    if ceiling is not None:
        asked = request.headers.get(PRIORITY_HEADER)
        if asked is not None and asked.isdigit():
            priority = max(priority, min(int(asked), ceiling))
    ctx.priority = priority
    ctx.namespace = namespaces.match(request.headers, ctx.body)
