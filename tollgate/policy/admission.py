"""Admit stage: every limit that applies to a request checked and consumed in one atomic limiter call.

Rules (global ∪ plan ∪ tenant ∪ namespace), the plan's own limits and the
spend quota become ``LimitSpec``s; the limiter admits them all or none. Token
limits reserve an estimate now (input: the prompt; output: the completion
cap; total: both) and money budgets the estimated cost of that at the
model's prices; the settler reconciles them with the real usage and cost.
Concurrency limits hold a lease for the life of the request.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from tollgate.clock import Clock, SystemClock
from tollgate.config.rules import NANOS, PERIODS, ROLLING_MONTH_MS, RuleSpec
from tollgate.eager import Eager
from tollgate.edge.ratelimit_headers import HeaderLimit, HeaderPlan, ratelimit_headers, retry_after_seconds
from tollgate.errors import QuotaExhausted, RateLimited
from tollgate.identity.directory import Principal
from tollgate.limiter import Decision, Lease, Limiter, LimitSpec, LimitState, Reservation
from tollgate.limiter.spec import Calendar, FailMode, Kind, Unit
from tollgate.policy.lease_wait import LeaseWaiters
from tollgate.upstream.estimates import completion_cap, estimate_prompt_tokens, requested_completion_tokens

if TYPE_CHECKING:
    from tollgate.accounting.pricing import Pricing
    from tollgate.policy.rules import RuleSet

__all__ = [
    "DEGRADED_HEADER",
    "SHAPED_HEADER",
    "Admission",
    "AdmissionRequest",
    "LimitMetrics",
    "admit",
    "limit_spec",
    "rule_unit",
    "scope_key",
]

log = logging.getLogger("tollgate.admission")

DEGRADED_HEADER = "x-tollgate-degraded"
# A concurrency lease lives this long without renewal; long streams renew it (see LEASE_RENEW_EVERY).
LEASE_TTL_MS = 60_000
_MONTH_MS = 31 * 86_400_000
_TENANT_SCOPES = frozenset({"tenant", "key", "user"})
_TOKEN_UNITS: dict[str, Unit] = {"total": "tokens", "input": "input_tokens", "output": "output_tokens"}
_TOKEN_UNIT_NAMES = frozenset(_TOKEN_UNITS.values())
# What a request's estimate is in each unit: (requests, prompt, completion, nanos) -> cost.
_COST_OF: dict[str, Callable[[int, int, int], int]] = {
    "requests": lambda p, c, n: 1,
    "tokens": lambda p, c, n: p + c,
    "input_tokens": lambda p, c, n: p,
    "output_tokens": lambda p, c, n: c,
    "nanos": lambda p, c, n: n,
}


@dataclass(slots=True)
class Admission:
    """What admission decided for one request, and the handles to settle and release afterwards."""

    decision: Decision
    store: str = ""
    # What was reserved at admission: the prompt estimate, the completion cap, and their cost at the
    # requested model's prices (0 when no money budget applies).
    prompt_estimate: int = 0
    completion_reserved: int = 0
    cost_estimate: int = 0
    # The most completion tokens the request's own cap (max_tokens and the like, times n) lets its provider
    # produce, 0 when it names none: a stream's output estimate is held to it (see StreamBudget).
    completion_cap: int = 0
    # The reserved limits a stream holds to while it runs (tokens, money; shadow ones left out), each with
    # whether running out of it ends the stream (``on_exceed: cut``), and the price terms for money ones.
    stream_limits: tuple[tuple[LimitSpec, bool], ...] = ()
    rates: tuple[float, float, float] | None = None
    extensions: list[Reservation] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    # A stream's extension request still in flight (settling waits for it).
    pending: Eager | None = None

    # Written out, not generated: the dataclass's generated __init__ (its default factories included) runs as
    # interpreted code even in the compiled build, about 5.5 K instructions an admitted request; this one is compiled.
    def __init__(
        self,
        decision: Decision,
        store: str = "",
        prompt_estimate: int = 0,
        completion_reserved: int = 0,
        cost_estimate: int = 0,
        completion_cap: int = 0,
        stream_limits: tuple[tuple[LimitSpec, bool], ...] = (),
        rates: tuple[float, float, float] | None = None,
        extensions: list[Reservation] | None = None,
        headers: dict[str, str] | None = None,
        settled: bool = False,
        pending: Eager | None = None,
    ) -> None:
        self.decision = decision
        self.store = store
        self.prompt_estimate = prompt_estimate
        self.completion_reserved = completion_reserved
        self.cost_estimate = cost_estimate
        self.completion_cap = completion_cap
        self.stream_limits = stream_limits
        self.rates = rates
        self.extensions = [] if extensions is None else extensions
        self.headers = {} if headers is None else headers
        self.settled = settled
        self.pending = pending

    @property
    def reservation(self) -> Reservation | None:
        return self.decision.reservation

    @property
    def lease(self) -> Lease | None:
        return self.decision.lease


class _Endpoint(Protocol):
    @property
    def kind(self) -> str: ...


class AdmissionRequest(Protocol):
    """What admission reads of a request, once identified and matched (the pipeline's ``RequestContext`` is one)."""

    @property
    def request_id(self) -> str: ...

    @property
    def endpoint(self) -> _Endpoint | None: ...

    @property
    def client_ip(self) -> str: ...

    @property
    def body(self) -> dict[str, Any] | None: ...

    @property
    def model(self) -> str | None: ...

    @property
    def stream(self) -> bool: ...

    @property
    def principal(self) -> Principal | None: ...

    @property
    def end_user(self) -> str | None: ...

    @property
    def namespace(self) -> str: ...


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


def rule_unit(rule: RuleSpec) -> Unit:
    """What a rule counts: requests, tokens (input + output), input_tokens, output_tokens, or nanos (money)."""
    if rule.type == "token_limit":
        return _TOKEN_UNITS[rule.count]
    if rule.type == "budget":
        return "nanos"
    if rule.type == "quota" and rule.unit == "tokens":
        return "tokens"
    return "requests"


def scope_key(rule: RuleSpec, values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The counter's scope: the value of each of the rule's scopes (``-`` for no key, user or model)."""
    return tuple((s, values[s]) for s in rule.scope if s != "global")


def limit_spec(rule: RuleSpec, scope: tuple[tuple[str, str], ...], tenant: str, cost: int) -> LimitSpec:
    """The limit one rule puts on one scope (``cost``: the request's, in the rule's unit): what admission
    consumes, and what the admin API peeks at."""

    def spec(
        kind: str,
        window_ms: int,
        cost: int,
        unit: Unit = "requests",
        calendar: str | None = None,
        max_delay_ms: int = 0,
    ) -> LimitSpec:
        return LimitSpec(
            name=rule.name,
            kind=cast("Kind", kind),
            limit=rule.limit,
            window_ms=window_ms,
            cost=cost,
            unit=unit,
            calendar=cast("Calendar | None", calendar),
            scope_key=scope,
            tenant=tenant if _TENANT_SCOPES.intersection(rule.scope) else None,
            fail_mode=cast("FailMode", rule.fail_mode),
            shadow=rule.shadow,
            max_delay_ms=max_delay_ms,
        )

    if rule.type == "connection_limit":
        return spec("concurrency", LEASE_TTL_MS, 1)
    unit = rule_unit(rule)
    if rule.type == "budget":
        if rule.window == "rolling":
            return spec("sliding_window", ROLLING_MONTH_MS if rule.per == "month" else PERIODS[rule.per], cost, "nanos")
        return spec("fixed_window", PERIODS[rule.per] or _MONTH_MS, cost, "nanos", calendar=rule.per)
    if rule.per == "month" or rule.type == "quota":
        return spec("fixed_window", _MONTH_MS, cost, unit, calendar="month")
    window_ms = PERIODS[rule.per]
    if rule.on_limit == "delay":  # a leaky bucket as a queue: over the rate, a request waits its turn
        return spec("shaping", window_ms, cost, max_delay_ms=round(rule.max_delay * 1000))
    if rule.algorithm == "fixed_window" and rule.per in ("minute", "hour", "day"):
        return spec("fixed_window", window_ms, cost, unit, calendar=rule.per)
    return spec(rule.algorithm, window_ms, cost, unit)


_SPEC_CACHE_LIMIT = 100_000
# The scopes whose values a _Plan fixes: its requests all have its tenant, plan and namespace.
_PLAN_SCOPES = frozenset({"tenant", "plan", "namespace"})
_SYSTEM_CLOCK = SystemClock()


class _Plan:
    """The rules of one (plan, tenant, namespace) with the plan's limits, and what follows from them alone."""

    __slots__ = (
        "limits",
        "checks",
        "rules",
        "scopes",
        "needs_tokens",
        "needs_money",
        "stream",
        "used_scopes",
        "request_scopes",
        "shapes",
        "shadows",
        "headers",
    )

    def __init__(self, limits: object, checks: tuple[Any, ...], rules: tuple[RuleSpec, ...]) -> None:
        self.limits = limits  # the Limits object it was built for (a reload or an override brings a new one)
        self.checks = checks
        self.rules = rules
        units = [rule_unit(r) for r in rules]
        # per rule: its scopes other than global, and what it counts
        self.scopes = tuple((tuple(sc for sc in r.scope if sc != "global"), unit) for r, unit in zip(rules, units))
        self.needs_tokens = any(unit != "requests" for unit in units)
        self.needs_money = "nanos" in units
        # The reserved limits a stream holds to: (index in rules, ends the stream when spent)
        self.stream = tuple(
            (i, r.on_exceed == "cut")
            for i, (r, unit) in enumerate(zip(rules, units))
            if unit != "requests" and not r.shadow and r.type != "connection_limit"
        )
        # The scopes any of the rules names: a request's specs depend on their values and the token cost only.
        self.used_scopes = tuple(sorted({sc for scopes, _ in self.scopes for sc in scopes}))
        # Whether any of them can differ between requests of the plan (a plan is one tenant's, in one namespace).
        self.request_scopes = not _PLAN_SCOPES.issuperset(self.used_scopes)
        # A rule that delays instead of refusing (a leaky bucket): an admitted request may have to wait its turn.
        self.shapes = any(r.on_limit == "delay" and not r.shadow for r in rules)
        self.shadows = any(r.shadow for r in rules)
        # Which limits show in the rate-limit headers, and their fixed parts: made from the first spec list
        # (every list of the plan has the same limits in the same order; only costs and scope values differ).
        self.headers: HeaderPlan | None = None


def _plan(rules: RuleSet, principal: Principal, namespace: str) -> _Plan:
    key = (principal.plan, principal.tenant, namespace)
    hit: _Plan | None = rules.admission_cache.get(key)
    if hit is not None and hit.limits is principal.limits:
        return hit
    checks, rule_list = rules.applicable(principal.plan, principal.tenant, namespace)
    implied = rules.plan_rules(principal.limits) + rules.spend_rules(principal.tenant, principal.plan)
    if len(rules.admission_cache) >= _SPEC_CACHE_LIMIT:
        rules.admission_cache.clear()
    hit = rules.admission_cache[key] = _Plan(principal.limits, checks, rule_list + implied)
    return hit


_SCOPE_VALUES: dict[str, Callable[[Principal, AdmissionRequest], str]] = {
    "tenant": lambda p, ctx: p.tenant,
    "key": lambda p, ctx: p.key_id or "-",
    "user": lambda p, ctx: ctx.end_user or "-",
    "ip": lambda p, ctx: ctx.client_ip,
    "namespace": lambda p, ctx: ctx.namespace,
    "model": lambda p, ctx: ctx.model or "-",
    "plan": lambda p, ctx: p.plan or "-",
}
# Spec tuples kept per RuleSet. The token estimate is part of the key and varies with the prompt, so the
# bound is what keeps memory flat (about 200 bytes an entry) under traffic of many tenants and prompt sizes.
_SPEC_LISTS_LIMIT = 16_384


def _specs(
    rules: RuleSet, plan: _Plan, p: Principal, ctx: AdmissionRequest, estimate: tuple[int, int, int]
) -> tuple[LimitSpec, ...]:
    """The request's limits, one tuple per (rule plan, scope values, estimate); shared: never mutated.

    ``estimate``: the prompt tokens, the completion cap and their cost in nanos.
    """
    key: tuple[Any, ...]
    if plan.request_scopes:
        values = tuple([_SCOPE_VALUES[name](p, ctx) for name in plan.used_scopes])
        key = (id(plan), values, estimate)
    else:  # every scope value is the plan's own: the estimate alone tells its requests' limits apart
        values = None
        key = (id(plan), estimate)
    hit: tuple[_Plan, tuple[LimitSpec, ...]] | None = rules.spec_lists.get(key)
    if hit is None or hit[0] is not plan:
        if len(rules.spec_lists) >= _SPEC_LISTS_LIMIT:
            rules.spec_lists.clear()
        if values is None:
            values = tuple([_SCOPE_VALUES[name](p, ctx) for name in plan.used_scopes])
        specs = _build_specs(plan, p.tenant, dict(zip(plan.used_scopes, values)), estimate, rules.spec_cache)
        hit = rules.spec_lists[key] = (plan, specs)
    return hit[1]


def _build_specs(
    plan: _Plan,
    tenant: str,
    values: dict[str, str],
    estimate: tuple[int, int, int],
    cache: dict[tuple[Any, ...], LimitSpec],
) -> tuple[LimitSpec, ...]:
    """The plan's limits for these scope values; a spec (validated when built) is reused for the same rule, scope and cost."""
    out = []
    for rule, (scopes, unit) in zip(plan.rules, plan.scopes):
        scope = tuple([(s, values[s]) for s in scopes])
        cost = _COST_OF[unit](*estimate)
        key = (rule.name, rule.limit, tenant, scope, cost)
        spec = cache.get(key)
        if spec is None:
            if len(cache) >= _SPEC_CACHE_LIMIT:
                cache.clear()
            spec = cache[key] = limit_spec(rule, scope, tenant, cost)
        out.append(spec)
    return tuple(out)


def _header_plan(specs: Sequence[LimitSpec]) -> HeaderPlan:
    """The limits of ``specs`` that show in the headers, by position (what :func:`_header_limits` keeps)."""
    return HeaderPlan(
        (i, HeaderLimit(s.name, s.unit if s.unit in _HEADER_UNITS else "tokens", s.limit, 0, 0, s.window_ms))
        for i, s in enumerate(specs)
        if s.kind != "concurrency" and not s.shadow and s.unit != "nanos"
    )


def _headers(plan: _Plan, states: tuple[LimitState, ...], specs: Sequence[LimitSpec]) -> dict[str, str]:
    """The rate-limit headers of a decision: from the plan's cached parts when every limit was evaluated."""
    if len(states) != len(specs):  # a cached refusal, or a refusal before every group ran
        return ratelimit_headers(_header_limits(states, specs))
    headers = plan.headers
    if headers is None:
        headers = plan.headers = _header_plan(specs)
    return headers.headers(states)


def _header_limits(states: tuple[LimitState, ...], specs: Sequence[LimitSpec]) -> list[HeaderLimit]:
    # Every limit was evaluated (the usual case): states come in the order of specs.
    pairs = zip(specs, states) if len(states) == len(specs) else _by_name(states, specs)
    return [
        HeaderLimit(
            st.name,
            st.unit if st.unit in _HEADER_UNITS else "tokens",
            st.limit,
            st.remaining,
            st.reset_ms,
            spec.window_ms,
        )
        for spec, st in pairs
        if spec.kind != "concurrency" and not st.shadow and st.unit != "nanos"
    ]


# Input and output token limits show in the token headers; money budgets in none.
_HEADER_UNITS = frozenset({"requests", "tokens"})


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


def _refusal(
    decision: Decision, specs: Sequence[LimitSpec], headers: dict[str, str], waited: float = 0.0, currency: str = ""
) -> RateLimited:
    refused = decision.refused or decision.limits
    budgets = [s for s in refused if s.unit == "nanos"]
    if budgets:
        return _spent(budgets, decision, headers, currency)
    names = ", ".join(sorted({s.name for s in refused}))
    # OpenAI's type says what ran out: "tokens" when a token limit refused, else "requests".
    error_type = "tokens" if any(s.unit in _TOKEN_UNIT_NAMES for s in refused) else "requests"
    if decision.retry_after_ms < 0:
        first = refused[0]
        return RateLimited(
            f"request refused by rule {names}: it needs more {first.unit} than the limit of {first.limit} allows at all",
            headers={**headers, "x-should-retry": "false"},  # no wait makes it fit: SDKs must not retry it
            error_type=error_type,
        )
    wait = retry_after_seconds(decision.retry_after_ms)
    # retry-after-ms, read first by OpenAI's SDKs, is the limiter's own figure; Retry-After rounds it up to seconds.
    headers = {**headers, "Retry-After": wait, "retry-after-ms": str(max(1, decision.retry_after_ms))}
    what = "; ".join(f"{s.name}: {s.limit} {s.unit}, {max(s.remaining, 0)} left" for s in refused)
    queued = f"; waited {waited:.1f}s for a free slot" if waited else ""
    return RateLimited(
        f"rate limit exceeded by rule {names} ({what}){queued}; retry after {wait}s",
        headers=headers,
        error_type=error_type,
    )


SHAPED_HEADER = "x-tollgate-shaped-ms"


async def _wait_turn(decision: Decision, headers: dict[str, str]) -> None:
    """Wait for the request's turn when a delaying limit (``on_limit: delay``) queued it: the store gave each
    request of the scope its own release time, ``limit`` per window apart, so requests leave in the order the store
    saw them. Leases taken with the admission are held meanwhile; a client that leaves gives up its turn (the queue
    does not move back: the requests behind keep their times, as a leaky bucket leaks whatever comes)."""
    wait = max(
        (s.retry_after_ms for s in decision.limits if s.kind == "shaping" and s.allowed and not s.shadow), default=0
    )
    if wait > 0:
        headers[SHAPED_HEADER] = str(wait)
        await asyncio.sleep(wait / 1000)


def _money(nanos: int) -> str:
    return f"{nanos / NANOS:.2f}" if nanos % (NANOS // 100) == 0 else f"{nanos / NANOS:.6f}".rstrip("0")


def _spent(budgets: list[LimitState], decision: Decision, headers: dict[str, str], currency: str) -> QuotaExhausted:
    """A money budget refused: OpenAI's ``insufficient_quota``, naming the budget and what is left of it."""
    what = "; ".join(
        f"budget {s.name}: {_money(s.limit)} {currency}, {_money(max(s.remaining, 0))} left".replace("  ", " ")
        for s in budgets
    )
    if decision.retry_after_ms > 0:
        headers = {
            **headers,
            "Retry-After": retry_after_seconds(decision.retry_after_ms),
            "retry-after-ms": str(decision.retry_after_ms),
        }
    return QuotaExhausted(f"the request's estimated cost exceeds what is left of its budget ({what})", headers=headers)


async def admit(
    ctx: AdmissionRequest,
    rules: RuleSet,
    limiter: Limiter,
    metrics: LimitMetrics | None = None,
    waiters: LeaseWaiters | None = None,
    pricing: Callable[[], Pricing] | None = None,
    clock: Clock = _SYSTEM_CLOCK,
) -> Admission | None:
    """Run field checks, then admit every applicable limit at once; raises RateLimited/BadRequest.

    ``pricing`` gives the price table, asked only when a money budget applies; ``clock`` times a wait for a lease.
    """
    principal = ctx.principal
    assert principal is not None  # the identify stage ran
    plan = _plan(rules, principal, ctx.namespace)
    if plan.checks:
        rules.check_fields(plan.checks, ctx.body)
    rule_list = plan.rules
    if not rule_list:
        return None
    assert ctx.endpoint is not None and ctx.body is not None
    needs_tokens = plan.needs_tokens
    prompt = completion = nanos = 0
    rates = None
    currency = ""
    if needs_tokens:
        prompt = estimate_prompt_tokens(ctx.endpoint.kind, ctx.body)
        completion = requested_completion_tokens(ctx.endpoint.kind, ctx.body, rules.default_max_tokens)
        if plan.needs_money and pricing is not None:
            prices = pricing()
            currency = prices.currency
            rates = prices.rates(ctx.model)
            nanos = math.ceil(rates[0] + prompt * rates[1] + completion * rates[2])  # as a stream counts it
    specs = _specs(rules, plan, principal, ctx, (prompt, completion, nanos))
    store = limiter.store_for(tenant=principal.tenant, plan=principal.plan)
    decision = await limiter.admit(specs, store=store)
    waited = 0.0
    if not decision.allowed and waiters is not None:
        wait = _queue_timeout(decision, rule_list)
        if wait > 0:
            started = clock.loop_time()
            decision = await waiters.retry(lambda: limiter.admit(specs, store=store), wait) or decision
            waited = clock.loop_time() - started
    headers = _headers(plan, decision.limits, specs)
    # An admission that no store failed refused nothing but shadow limits: without any, nothing to count.
    if metrics is not None and (not decision.allowed or decision.degraded or plan.shadows):
        _count(decision, metrics)
    if decision.degraded:
        headers[DEGRADED_HEADER] = "store"
        log.warning("request %s admitted on a degraded store (fail modes applied)", ctx.request_id)
    if not decision.allowed:
        raise _refusal(decision, specs, headers, waited, currency)
    if plan.shapes:
        await _wait_turn(decision, headers)
    return Admission(
        decision=decision,
        store=store,
        prompt_estimate=prompt,
        completion_reserved=completion,
        cost_estimate=nanos,
        completion_cap=completion_cap(ctx.body) if ctx.stream and plan.stream else 0,
        stream_limits=tuple([(specs[i], cut) for i, cut in plan.stream]) if ctx.stream else (),
        rates=rates,
        headers=headers,
    )
