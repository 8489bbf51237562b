"""Rules compiled once per config version: which apply to a request, and the local field checks."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tollgate.config.identity import Limits
from tollgate.config.rules import NANOS, Attach, RulesConfig, RuleSpec
from tollgate.errors import BadRequest
from tollgate.policy.matchers import MISSING, compile_path, lookup

__all__ = ["SPEND_RULE", "FieldCheck", "RuleSet", "compile_field_check", "limits_as_rules"]

# The name of the budget a spend quota (``quotas: ... monthly_spend``) becomes.
SPEND_RULE = "quota.monthly_spend"
# A tenant's spend quota in the pricing currency (None: none), from the accounting config.
SpendLimit = Callable[[str, "str | None"], "float | None"]

log = logging.getLogger("tollgate.rules")

_CACHE_LIMIT = 200_000


@dataclass(frozen=True, slots=True)
class FieldCheck:
    rule: RuleSpec
    path: tuple[str | int, ...]
    holds: Callable[[Any], bool]  # called with the found value, or MISSING


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def compile_field_check(rule: RuleSpec) -> FieldCheck:
    op, expected = rule.op, rule.value
    test: Callable[[Any], bool]
    if op == "exists":
        want = expected is not False
        return FieldCheck(rule, compile_path(rule.field), lambda v: (v is not MISSING) == want)
    if op in ("gt", "gte", "lt", "lte"):
        bound = float(expected)
        compare: Callable[[float], bool] = {
            "gt": lambda x: x > bound,
            "gte": lambda x: x >= bound,
            "lt": lambda x: x < bound,
            "lte": lambda x: x <= bound,
        }[op]

        def test(v: Any) -> bool:
            n = _number(v)
            return n is not None and compare(n)

    elif op == "eq":
        test = lambda v: v == expected  # noqa: E731
    elif op == "ne":
        test = lambda v: v != expected  # noqa: E731
    elif op == "contains":
        test = lambda v: isinstance(v, (str, list)) and expected in v  # noqa: E731
    elif op == "regex":
        pattern = re.compile(expected)
        test = lambda v: isinstance(v, str) and pattern.search(v) is not None  # noqa: E731
    elif op == "max_length":
        limit = int(expected)
        test = lambda v: isinstance(v, (str, list, dict)) and len(v) <= limit  # noqa: E731
    else:
        raise ValueError(f"unknown field_check op {op!r}")
    # An absent field passes every check but `exists`: there is nothing to hold against the rule.
    return FieldCheck(rule, compile_path(rule.field), lambda v: v is MISSING or test(v))


def limits_as_rules(limits: Limits) -> tuple[RuleSpec, ...]:
    """The plan's limits (after tenant overrides) as tenant-scoped rules named ``plan.<limit>``."""
    attach = Attach(is_global=True)
    out: list[RuleSpec] = []
    if limits.requests_per_minute:
        out.append(RuleSpec("plan.requests_per_minute", "request_limit", attach, limit=limits.requests_per_minute))
    if limits.tokens_per_minute:
        out.append(RuleSpec("plan.tokens_per_minute", "token_limit", attach, limit=limits.tokens_per_minute))
    if limits.concurrency:
        out.append(RuleSpec("plan.concurrency", "connection_limit", attach, limit=limits.concurrency))
    if limits.monthly_requests:
        out.append(
            RuleSpec(
                "plan.monthly_requests",
                "quota",
                attach,
                limit=limits.monthly_requests,
                per="month",
                algorithm="fixed_window",
            )
        )
    if limits.monthly_tokens:
        out.append(
            RuleSpec(
                "plan.monthly_tokens",
                "quota",
                attach,
                limit=limits.monthly_tokens,
                per="month",
                algorithm="fixed_window",
                unit="tokens",
            )
        )
    return tuple(out)


class RuleSet:
    """The rules of one config version, indexed by what they attach to."""

    def __init__(self, config: RulesConfig, spend_limit: SpendLimit | None = None) -> None:
        self.default_max_tokens = config.default_max_tokens
        self._spend_limit = spend_limit
        self._spend_cache: dict[tuple[str, str | None], tuple[RuleSpec, ...]] = {}
        enabled = [r for r in config.rules if r.enabled]
        self._global = tuple(r for r in enabled if r.attach.is_global)
        self._by_plan: dict[str, list[RuleSpec]] = {}
        self._by_tenant: dict[str, list[RuleSpec]] = {}
        self._by_namespace: dict[str, list[RuleSpec]] = {}
        for r in enabled:
            for p in r.attach.plans:
                self._by_plan.setdefault(p, []).append(r)
            for t in r.attach.tenants:
                self._by_tenant.setdefault(t, []).append(r)
            for n in r.attach.namespaces:
                self._by_namespace.setdefault(n, []).append(r)
        self._checks = {r.name: compile_field_check(r) for r in enabled if r.type == "field_check"}
        self._cache: dict[tuple[str | None, str | None, str], tuple[tuple[FieldCheck, ...], tuple[RuleSpec, ...]]] = {}
        self._plan_cache: dict[Limits, tuple[RuleSpec, ...]] = {}
        # Limiter specs built from these rules, by (rule, limit, tenant, scope, cost): see admission._specs.
        self.spec_cache: dict[tuple[Any, ...], Any] = {}
        # What admission works out once per (plan, tenant, namespace) and set of plan limits: see admission._plan.
        self.admission_cache: dict[tuple[str | None, str | None, str], Any] = {}
        # The spec tuples of those plans by scope values and token cost: see admission._specs.
        self.spec_lists: dict[tuple[Any, ...], Any] = {}

    def plan_rules(self, limits: Limits) -> tuple[RuleSpec, ...]:
        """A plan's limits (after tenant overrides) as rules; one tuple per distinct set of limits."""
        hit = self._plan_cache.get(limits)
        if hit is None:
            if len(self._plan_cache) >= _CACHE_LIMIT:
                self._plan_cache.clear()
            hit = self._plan_cache[limits] = limits_as_rules(limits)
        return hit

    def spend_rules(self, tenant: str, plan: str | None) -> tuple[RuleSpec, ...]:
        """The tenant's monthly spend quota as a budget enforced at admission (empty without one)."""
        if self._spend_limit is None:
            return ()
        key = (tenant, plan)
        hit = self._spend_cache.get(key)
        if hit is None:
            amount = self._spend_limit(tenant, plan)
            hit = ()
            if amount:
                hit = (
                    RuleSpec(
                        SPEND_RULE,
                        "budget",
                        Attach(is_global=True),
                        limit=max(1, round(amount * NANOS)),
                        per="month",
                        algorithm="fixed_window",
                        fail_mode="local",
                    ),
                )
            if len(self._spend_cache) >= _CACHE_LIMIT:
                self._spend_cache.clear()
            self._spend_cache[key] = hit
        return hit

    def applicable(
        self, plan: str | None, tenant: str | None, namespace: str
    ) -> tuple[tuple[FieldCheck, ...], tuple[RuleSpec, ...]]:
        """``(field checks, limit rules)`` for a request: the union of global, plan, tenant and namespace rules."""
        key = (plan, tenant, namespace)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        seen: dict[str, RuleSpec] = {}
        for group in (
            self._global,
            self._by_plan.get(plan or "", ()),
            self._by_tenant.get(tenant or "", ()),
            self._by_namespace.get(namespace, ()),
        ):
            for r in group:
                seen.setdefault(r.name, r)
        ordered = sorted(seen.values(), key=lambda r: -r.priority)
        result = (
            tuple(self._checks[r.name] for r in ordered if r.type == "field_check"),
            tuple(r for r in ordered if r.type != "field_check"),
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result

    @staticmethod
    def check_fields(checks: tuple[FieldCheck, ...], body: dict[str, Any] | None) -> list[str]:
        """Raise ``BadRequest`` with the first failing check's message; shadow checks only report.

        Returns the names of shadow checks that would have refused.
        """
        shadowed: list[str] = []
        for check in checks:
            value = MISSING if body is None else lookup(body, check.path)
            if check.holds(value):
                continue
            if check.rule.shadow:
                shadowed.append(check.rule.name)
                log.info("shadow field_check %s would refuse the request", check.rule.name)
                continue
            raise BadRequest(check.rule.message, param=check.rule.field, code="field_check_failed")
        return shadowed
