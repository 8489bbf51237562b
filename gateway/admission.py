"""Admit stage: every limit that applies to a request checked and consumed in one atomic limiter call.

Rules (global ∪ plan ∪ tenant ∪ namespace) and the plan's own limits become
``LimitSpec``s; the limiter admits them all or none. Token limits reserve an
estimate now (prompt + max completion) that :func:`settle` reconciles with
the real usage; concurrency limits hold a lease for the life of the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .config.rules import PERIODS, RuleSpec
from .errors import RateLimited
from .lease_queue import LeaseWaiters
from .limiter import Decision, Lease, Limiter, LimitSpec, LimitState, Reservation
from .ratelimit_headers import HeaderLimit, ratelimit_headers, retry_after_seconds
from .tokens import estimate_prompt_tokens, requested_completion_tokens

if TYPE_CHECKING:
    from .context import RequestContext
    from .rules import RuleSet

__all__ = ["Admission", "admit", "limit_spec", "scope_key", "DEGRADED_HEADER"]

log = logging.getLogger("tollgate.admission")

DEGRADED_HEADER = "x-tollgate-degraded"
# A concurrency lease lives this long without renewal; long streams renew it (see LEASE_RENEW_EVERY).
LEASE_TTL_MS = 60_000
_MONTH_MS = 31 * 86_400_000
_TENANT_SCOPES = frozenset({"tenant", "key", "user"})


@dataclass(slots=True)
class Admission:
    """What admission decided for one request, and the handles to settle and release afterwards."""

    decision: Decision
    store: str = ""
    # Token cost reserved at admission (prompt estimate + completion cap); 0 when no token limit applies.
    reserved_tokens: int = 0
    prompt_estimate: int = 0
    # The token limits a stream may extend while it runs, and what to do when the budget runs out.
    token_specs: tuple[LimitSpec, ...] = ()
    cut_on_exceed: bool = False
    extensions: list[Reservation] = field(default_factory=list)
    extended_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    # A stream's extension request still in flight (settling waits for it).
    pending: asyncio.Task[None] | None = None

    @property
    def reservation(self) -> Reservation | None:
        return self.decision.reservation

    @property
    def lease(self) -> Lease | None:
        return self.decision.lease


class LimitMetrics(Protocol):
    def limit_decision(self, rule: str, outcome: str, n: int = 1) -> None: ...

    def degraded_admission(self, rule: str, mode: str) -> None: ...


def _count(decision: Decision, metrics: LimitMetrics) -> None:
    """Refusals (real and shadow) and degraded answers per rule; plain admissions are counted as requests."""
    for st in decision.limits:
        if not st.allowed:
            metrics.limit_decision(st.name, "shadow_refused" if st.shadow else "refused")
        if st.degraded:
            metrics.degraded_admission(st.name, "degraded")


def _counts_tokens(rule: RuleSpec) -> bool:
    return rule.type == "token_limit" or (rule.type == "quota" and rule.unit == "tokens")


def scope_key(rule: RuleSpec, values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The counter's scope: the value of each of the rule's scopes (``-`` for no key, user or model)."""
    return tuple((s, values[s]) for s in rule.scope if s != "global")


def limit_spec(rule: RuleSpec, scope: tuple[tuple[str, str], ...], tenant: str, token_cost: int) -> LimitSpec:
    """The limit one rule puts on one scope: what admission consumes, and what the admin API peeks at."""
    common = {
        "name": rule.name,
        "scope_key": scope,
        "tenant": tenant if _TENANT_SCOPES.intersection(rule.scope) else None,
        "fail_mode": rule.fail_mode,
        "shadow": rule.shadow,
    }
    if rule.type == "connection_limit":
        return LimitSpec(kind="concurrency", limit=rule.limit, window_ms=LEASE_TTL_MS, cost=1, **common)
    tokens = _counts_tokens(rule)
    cost = token_cost if tokens else 1
    unit = "tokens" if tokens else "requests"
    if rule.per == "month" or rule.type == "quota":
        return LimitSpec(kind="fixed_window", limit=rule.limit, window_ms=_MONTH_MS, calendar="month", cost=cost, unit=unit, **common)
    window_ms = PERIODS[rule.per]
    if rule.algorithm == "fixed_window" and rule.per in ("minute", "hour", "day"):
        return LimitSpec(kind="fixed_window", limit=rule.limit, window_ms=window_ms, calendar=rule.per, cost=cost, unit=unit, **common)
    return LimitSpec(kind=rule.algorithm, limit=rule.limit, window_ms=window_ms, cost=cost, unit=unit, **common)  # type: ignore[arg-type]


_SPEC_CACHE_LIMIT = 100_000


def _specs(rules: tuple[RuleSpec, ...], ctx: RequestContext, token_cost: int, cache: dict[tuple[Any, ...], LimitSpec]) -> list[LimitSpec]:
    """The request's limits; a spec (validated when built) is reused for the same rule, scope and cost."""
    p = ctx.principal
    values = {
        "tenant": p.tenant,
        "key": p.key_id or "-",
        "user": p.user or "-",
        "ip": ctx.client_ip,
        "namespace": ctx.namespace,
        "model": ctx.model or "-",
    }
    out = []
    for rule in rules:
        scope = tuple((s, values[s]) for s in rule.scope if s != "global")
        cost = token_cost if _counts_tokens(rule) else 1
        key = (rule.name, rule.limit, p.tenant, scope, cost)
        spec = cache.get(key)
        if spec is None:
            if len(cache) >= _SPEC_CACHE_LIMIT:
                cache.clear()
            spec = cache[key] = limit_spec(rule, scope, p.tenant, cost)
        out.append(spec)
    return out


def _header_limits(states: tuple[LimitState, ...], specs: list[LimitSpec]) -> list[HeaderLimit]:
    by_name = {s.name: s for s in specs}
    out = []
    for st in states:
        spec = by_name.get(st.name)
        if spec is None or spec.kind == "concurrency" or st.shadow:
            continue
        out.append(HeaderLimit(st.name, st.unit, st.limit, st.remaining, st.reset_ms, spec.window_ms))
    return out


def _queue_timeout(decision: Decision, rules: tuple[RuleSpec, ...]) -> float:
    """How long to wait for a lease: only when every refusal is a connection_limit that allows queueing."""
    by_name = {r.name: r for r in rules}
    waits = []
    for st in decision.refused:
        rule = by_name.get(st.name)
        if rule is None or rule.type != "connection_limit" or rule.queue_timeout <= 0:
            return 0.0
        waits.append(rule.queue_timeout)
    return min(waits, default=0.0)


def _refusal(decision: Decision, specs: list[LimitSpec], headers: dict[str, str], waited: float = 0.0) -> RateLimited:
    refused = decision.refused or decision.limits
    names = ", ".join(sorted({s.name for s in refused}))
    if decision.retry_after_ms < 0:
        first = refused[0]
        return RateLimited(
            f"request refused by rule {names}: it needs more {first.unit} than the limit of {first.limit} allows at all",
            headers=headers,
        )
    wait = retry_after_seconds(decision.retry_after_ms)
    headers = {**headers, "Retry-After": wait}
    what = "; ".join(f"{s.name}: {s.limit} {s.unit}, {max(s.remaining, 0)} left" for s in refused)
    queued = f"; waited {waited:.1f}s for a free slot" if waited else ""
    return RateLimited(f"rate limit exceeded by rule {names} ({what}){queued}; retry after {wait}s", headers=headers)


async def admit(
    ctx: RequestContext,
    rules: RuleSet,
    limiter: Limiter,
    metrics: LimitMetrics | None = None,
    waiters: LeaseWaiters | None = None,
) -> Admission | None:
    """Run field checks, then admit every applicable limit at once; raises RateLimited/BadRequest."""
    principal = ctx.principal
    checks, rule_list = rules.applicable(principal.plan, principal.tenant, ctx.namespace)
    if checks:
        rules.check_fields(checks, ctx.body)
    implied = rules.plan_rules(principal.limits)
    if implied:
        rule_list = rule_list + implied
    if not rule_list:
        return None
    assert ctx.endpoint is not None and ctx.body is not None
    needs_tokens = any(_counts_tokens(r) for r in rule_list)
    prompt = completion = 0
    if needs_tokens:
        prompt = estimate_prompt_tokens(ctx.endpoint.kind, ctx.body)
        completion = requested_completion_tokens(ctx.endpoint.kind, ctx.body, rules.default_max_tokens)
    token_cost = prompt + completion
    specs = _specs(rule_list, ctx, token_cost, rules.spec_cache)
    store = limiter.store_for(tenant=principal.tenant, plan=principal.plan)
    decision = await limiter.admit(specs, store=store)
    waited = 0.0
    if not decision.allowed and waiters is not None:
        wait = _queue_timeout(decision, rule_list)
        if wait > 0:
            started = asyncio.get_running_loop().time()
            decision = await waiters.retry(lambda: limiter.admit(specs, store=store), wait) or decision
            waited = asyncio.get_running_loop().time() - started
    headers = ratelimit_headers(_header_limits(decision.limits, specs))
    if metrics is not None:
        _count(decision, metrics)
    if decision.degraded:
        headers[DEGRADED_HEADER] = "store"
        log.warning("request %s admitted on a degraded store (fail modes applied)", ctx.request_id)
    if not decision.allowed:
        raise _refusal(decision, specs, headers, waited)
    token_specs = tuple(s for s in specs if s.reserves and not s.shadow)
    cut = any(r.on_exceed == "cut" for r in rule_list if _counts_tokens(r) and not r.shadow)
    return Admission(
        decision=decision,
            store=store,
        reserved_tokens=token_cost if needs_tokens else 0,
        prompt_estimate=prompt,
        token_specs=token_specs,
        cut_on_exceed=cut,
        headers=headers,
    )
