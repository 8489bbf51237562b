"""What is left of every limit that applies to a caller, read from the limiter without consuming anything.

The rules are those admission would apply to a request of the principal in
the namespace given (global, plan, tenant and namespace rules, the plan's
limits as ``plan.*`` rules and the spend quota as a budget). A rule that
counts per end user or per model has one counter per value the request would
carry: it is listed with ``per`` naming those scopes and no ``remaining``.
A counter the store cannot read is listed with ``remaining: null`` and
``unavailable: true``; the rest still answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tollgate.accounting.pricing import to_money
from tollgate.config.rules import RuleSpec
from tollgate.errors import StoreError
from tollgate.identity.directory import Principal
from tollgate.limiter import Limiter, LimitState
from tollgate.policy.admission import limit_spec, rule_unit, scope_key
from tollgate.policy.rules import RuleSet

__all__ = ["CallerScope", "applicable_rules", "remaining_limits"]

# Scopes whose value a request chooses (one counter per end user, per model): no single "remaining" for the caller.
_PER_REQUEST = ("user", "model")


@dataclass(frozen=True, slots=True)
class CallerScope:
    """The values of the scopes a caller is counted under, outside any one request's body."""

    namespace: str
    ip: str


def applicable_rules(rules: RuleSet, principal: Principal, namespace: str) -> tuple[RuleSpec, ...]:
    """Every limit rule admission applies to the principal's requests in ``namespace`` (field checks left out)."""
    _checks, limit_rules = rules.applicable(principal.plan, principal.tenant, namespace)
    return limit_rules + rules.plan_rules(principal.limits) + rules.spend_rules(principal.tenant, principal.plan)


def _window(rule: RuleSpec) -> str | None:
    if rule.type == "connection_limit":
        return None  # requests in flight at once
    if rule.type == "quota":
        return "month"
    if rule.type == "budget" and rule.window == "rolling":
        return f"rolling {rule.per}"
    return rule.per


def _amount(value: int, unit: str) -> int | float:
    return to_money(value) if unit == "nanos" else value


async def _one(
    rule: RuleSpec, principal: Principal, caller: CallerScope, limiter: Limiter, currency: str
) -> dict[str, Any]:
    unit = rule_unit(rule)
    view: dict[str, Any] = {
        "name": rule.name,
        "kind": rule.type,
        "unit": currency if unit == "nanos" else unit,
        "limit": _amount(rule.limit, unit),
        "window": _window(rule),
        "scope": list(rule.scope),
        "remaining": None,
        "reset_ms": None,
    }
    if rule.shadow:
        view["shadow"] = True
    per = [s for s in rule.scope if s in _PER_REQUEST]
    if per:
        view["per"] = per
        return view
    values = {
        "tenant": principal.tenant,
        "key": principal.key_id or "-",
        "plan": principal.plan or "-",
        "namespace": caller.namespace,
        "ip": caller.ip,
    }
    spec = limit_spec(rule, scope_key(rule, values), principal.tenant, 0)
    store = limiter.store_for(tenant=principal.tenant, plan=principal.plan)
    try:
        state: LimitState
        state, _used = await limiter.counter(spec, store=store)
    except StoreError:
        view["unavailable"] = True
        return view
    view["limit"] = _amount(state.limit, unit)
    view["remaining"] = _amount(max(state.remaining, 0), unit)
    view["reset_ms"] = max(state.reset_ms, 0)
    return view


async def remaining_limits(
    rules: RuleSet, limiter: Limiter, principal: Principal, caller: CallerScope, currency: str
) -> list[dict[str, Any]]:
    """Each limit that applies to the principal: name, kind, unit, limit, window, remaining now, ms to its reset."""
    applied = applicable_rules(rules, principal, caller.namespace)
    return list(await asyncio.gather(*(_one(r, principal, caller, limiter, currency) for r in applied)))
