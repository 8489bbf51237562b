"""Admit stage: every limit that applies to a request checked and consumed in one atomic limiter call.

Rules (global ∪ plan ∪ tenant ∪ namespace) and the plan's own limits become
``LimitSpec``s; the limiter admits them all or none. Token limits reserve an
estimate now (prompt + max completion) that :func:`settle` reconciles with
the real usage; concurrency limits hold a lease for the life of the request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
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


class _Plan:
    """The rules of one (plan, tenant, namespace) with the plan's limits, and what follows from them alone."""

    __slots__ = ("limits", "checks", "rules", "scopes", "needs_tokens", "cut_on_exceed", "used_scopes")

    def __init__(self, limits: object, checks: tuple[Any, ...], rules: tuple[RuleSpec, ...]) -> None:
        self.limits = limits  # the Limits object it was built for (a reload or an override brings a new one)
        self.checks = checks
        self.rules = rules
        # per rule: its scopes other than global, and whether it counts tokens
        self.scopes = tuple((tuple(sc for sc in r.scope if sc != "global"), _counts_tokens(r)) for r in rules)
        self.needs_tokens = any(_counts_tokens(r) for r in rules)
        self.cut_on_exceed = any(r.on_exceed == "cut" for r in rules if _counts_tokens(r) and not r.shadow)
        # The scopes any of the rules names: a request's specs depend on their values and the token cost only.
        self.used_scopes = tuple(sorted({sc for scopes, _ in self.scopes for sc in scopes}))


def _plan(rules: RuleSet, principal: Any, namespace: str) -> _Plan:
    key = (principal.plan, principal.tenant, namespace)
    hit = rules.admission_cache.get(key)
    if hit is not None and hit.limits is principal.limits:
        return hit
    checks, rule_list = rules.applicable(principal.plan, principal.tenant, namespace)
    implied = rules.plan_rules(principal.limits)
    if len(rules.admission_cache) >= _SPEC_CACHE_LIMIT:
        rules.admission_cache.clear()
    hit = rules.admission_cache[key] = _Plan(principal.limits, checks, rule_list + implied)
    return hit


_SCOPE_VALUES: dict[str, Callable[[Any, RequestContext], str]] = {
    "tenant": lambda p, ctx: p.tenant,
    "key": lambda p, ctx: p.key_id or "-",
    "user": lambda p, ctx: ctx.end_user or "-",
    "ip": lambda p, ctx: ctx.client_ip,
    "namespace": lambda p, ctx: ctx.namespace,
    "model": lambda p, ctx: ctx.model or "-",
}
# Spec tuples kept per RuleSet. The token estimate is part of the key and varies with the prompt, so the
# bound is what keeps memory flat (about 200 bytes an entry) under traffic of many tenants and prompt sizes.
_SPEC_LISTS_LIMIT = 16_384


def _specs(rules: RuleSet, plan: _Plan, ctx: RequestContext, token_cost: int) -> tuple[LimitSpec, ...]:
    """The request's limits, one tuple per (rule plan, scope values, token cost); shared: never mutated."""
    p = ctx.principal
    values = tuple([_SCOPE_VALUES[name](p, ctx) for name in plan.used_scopes])
    key = (id(plan), values, token_cost)
    hit = rules.spec_lists.get(key)
    if hit is None or hit[0] is not plan:
        if len(rules.spec_lists) >= _SPEC_LISTS_LIMIT:
            rules.spec_lists.clear()
        specs = _build_specs(plan, p.tenant, dict(zip(plan.used_scopes, values)), token_cost, rules.spec_cache)
        hit = rules.spec_lists[key] = (plan, specs)
    return hit[1]


def _build_specs(
    plan: _Plan, tenant: str, values: dict[str, str], token_cost: int, cache: dict[tuple[Any, ...], LimitSpec]
) -> tuple[LimitSpec, ...]:
    """The plan's limits for these scope values; a spec (validated when built) is reused for the same rule, scope and cost."""
    out = []
    for rule, (scopes, tokens) in zip(plan.rules, plan.scopes):
        scope = tuple([(s, values[s]) for s in scopes])
        cost = token_cost if tokens else 1
        key = (rule.name, rule.limit, tenant, scope, cost)
        spec = cache.get(key)
        if spec is None:
            if len(cache) >= _SPEC_CACHE_LIMIT:
                cache.clear()
            spec = cache[key] = limit_spec(rule, scope, tenant, cost)
        out.append(spec)
    return tuple(out)


def _header_limits(states: tuple[LimitState, ...], specs: Sequence[LimitSpec]) -> list[HeaderLimit]:
    # Every limit was evaluated (the usual case): states come in the order of specs.
    pairs = zip(specs, states) if len(states) == len(specs) else _by_name(states, specs)
    return [
        HeaderLimit(st.name, st.unit, st.limit, st.remaining, st.reset_ms, spec.window_ms)
        for spec, st in pairs
        if spec.kind != "concurrency" and not st.shadow
    ]


def _by_name(states: tuple[LimitState, ...], specs: Sequence[LimitSpec]) -> list[tuple[LimitSpec, LimitState]]:
    by_name = {s.name: s for s in specs}
    return [(by_name[st.name], st) for st in states if st.name in by_name]


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


def _refusal(decision: Decision, specs: Sequence[LimitSpec], headers: dict[str, str], waited: float = 0.0) -> RateLimited:
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
    plan = _plan(rules, principal, ctx.namespace)
    if plan.checks:
        rules.check_fields(plan.checks, ctx.body)
    rule_list = plan.rules
    if not rule_list:
        return None
    assert ctx.endpoint is not None and ctx.body is not None
    needs_tokens = plan.needs_tokens
    prompt = completion = 0
    if needs_tokens:
        prompt = estimate_prompt_tokens(ctx.endpoint.kind, ctx.body)
        completion = requested_completion_tokens(ctx.endpoint.kind, ctx.body, rules.default_max_tokens)
    token_cost = prompt + completion
    specs = _specs(rules, plan, ctx, token_cost)
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
    return Admission(
        decision=decision,
        store=store,
        reserved_tokens=token_cost if needs_tokens else 0,
        prompt_estimate=prompt,
        token_specs=tuple([s for s in specs if s.reserves and not s.shadow]) if needs_tokens else (),
        cut_on_exceed=plan.cut_on_exceed,
        headers=headers,
    )
