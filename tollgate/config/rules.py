"""The ``namespaces:`` and ``rules:`` sections: channels picked by matchers, and the limits attached to them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tollgate.config.reader import Node, Problems

__all__ = [
    "BUDGET_WINDOWS",
    "FIELD_CHECK_OPS",
    "MATCHER_OPS",
    "NANOS",
    "PERIODS",
    "ROLLING_MONTH_MS",
    "SCOPES",
    "TOKEN_COUNTS",
    "Attach",
    "MatcherSpec",
    "NamespaceSpec",
    "RuleSpec",
    "RulesConfig",
    "parse_rules",
]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MATCHER_TYPES = ("header", "body", "header_and_body")
MATCHER_OPS = ("equals", "not_equals", "contains", "regex", "in", "exists")
FIELD_CHECK_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "contains", "regex", "exists", "max_length")
RULE_TYPES = ("request_limit", "token_limit", "connection_limit", "quota", "budget", "field_check")
SCOPES = ("global", "plan", "tenant", "key", "user", "ip", "namespace", "model")
PERIODS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "month": 0}
ALGORITHMS = ("sliding_window", "gcra", "fixed_window")
FAIL_MODES = ("fail_open", "fail_closed", "local")
ON_EXCEED = ("cut", "allow")
QUOTA_UNITS = ("requests", "tokens")
# What a token_limit counts: input (prompt) tokens, output (completion) tokens, or both.
TOKEN_COUNTS = ("total", "input", "output")
# A budget's window: calendar (the UTC hour, day or month) or rolling (the last hour, day or 30 days).
BUDGET_WINDOWS = ("calendar", "rolling")
ROLLING_MONTH_MS = 30 * 86_400_000
NANOS = 1_000_000_000  # a budget is kept in 1e-9 of the pricing currency, as costs are
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class MatcherSpec:
    type: str  # header | body | header_and_body
    field: str
    op: str
    value: Any = None
    # header_and_body: the header to test alongside the body field (same op and value).
    header: str | None = None


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    name: str
    priority: int
    matchers: tuple[MatcherSpec, ...]


@dataclass(frozen=True, slots=True)
class Attach:
    """Where a rule applies; a request gets the union of global, plan, tenant and namespace rules."""

    is_global: bool = False
    plans: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleSpec:
    name: str
    type: str
    attach: Attach
    priority: int = 0
    enabled: bool = True
    shadow: bool = False
    # request_limit / token_limit / connection_limit / quota
    limit: int = 0  # units per window; a budget's amount in nanos (1e-9 of the pricing currency)
    per: str = "minute"
    algorithm: str = "sliding_window"
    scope: tuple[str, ...] = ("tenant",)
    fail_mode: str = "local"
    on_exceed: str = "cut"  # token_limit and budget during a stream
    count: str = "total"  # token_limit: total | input | output
    window: str = "calendar"  # budget: calendar | rolling
    # connection_limit: how long a request over the limit may wait for a lease (0: refuse at once)
    queue_timeout: float = 0.0
    unit: str = "requests"  # quota
    # field_check
    field: str = ""
    op: str = ""
    value: Any = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class RulesConfig:
    namespaces: tuple[NamespaceSpec, ...] = ()  # highest priority first
    rules: tuple[RuleSpec, ...] = ()
    # Token reservation when the request names no max_tokens.
    default_max_tokens: int = 4096


def _matcher(node: Node) -> MatcherSpec | None:
    mtype = node.str("type", choices=MATCHER_TYPES)
    field = node.str("field")
    op = node.str("op", choices=MATCHER_OPS)
    header = node.str("header", None)
    value = node.raw("value")
    node.finish()
    if mtype is None or field is None or op is None:
        return None
    if mtype == "header_and_body" and header is None:
        node.error("header", "is required for type header_and_body (the header tested alongside the body field)")
    if op != "exists" and value is None:
        node.error("value", f"is required for op {op}")
    if op == "exists" and value is not None and not isinstance(value, bool):
        node.error("value", "must be true or false for op exists (default true)")
    if op == "in" and not isinstance(value, list):
        node.error("value", "must be a list for op in")
    if op == "regex":
        value = _compile_check(node, value)
    if op in ("equals", "not_equals", "contains") and isinstance(value, (dict, list)):
        node.error("value", f"must be a scalar for op {op}")
    return MatcherSpec(type=mtype, field=field, op=op, value=value, header=header)


def _compile_check(node: Node, value: Any) -> Any:
    if not isinstance(value, str):
        node.error("value", "must be a regular expression string")
        return value
    try:
        re.compile(value)
    except re.error as exc:
        node.error("value", f"invalid regular expression: {exc}")
    return value


def _attach(node: Node) -> Attach:
    attach = Attach(
        is_global=node.bool("global", False),
        plans=node.str_list("plans", ()),
        tenants=node.str_list("tenants", ()),
        namespaces=node.str_list("namespaces", ()),
    )
    node.finish()
    if not (attach.is_global or attach.plans or attach.tenants or attach.namespaces):
        node.error("", "must name at least one of global, plans, tenants, namespaces")
    return attach


def _rule(name: str, node: Node, namespace_names: set[str]) -> RuleSpec | None:
    rtype = node.str("type", choices=RULE_TYPES)
    attach = _attach(node.child("attach", required=True))
    for ns in attach.namespaces:
        if ns not in namespace_names:
            node.error("attach.namespaces", f"unknown namespace {ns!r}")
    common: dict[str, Any] = {
        "name": name,
        "type": rtype or "",
        "attach": attach,
        "priority": node.int("priority", 0),
        "enabled": node.bool("enabled", True),
        "shadow": node.bool("shadow", False),
    }
    if rtype is None:
        node.finish()
        return None
    if rtype == "field_check":
        op = node.str("op", choices=FIELD_CHECK_OPS)
        value = node.raw("value")
        if op not in (None, "exists") and value is None:
            node.error("value", f"is required for op {op}")
        if op == "regex":
            value = _compile_check(node, value)
        if op in ("gt", "gte", "lt", "lte", "max_length") and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            node.error("value", f"must be a number for op {op}")
        spec = RuleSpec(
            **common,
            field=node.str("field") or "",
            op=op or "",
            value=value,
            message=node.str("message", f"request refused by rule {name}"),
        )
        node.finish()
        return spec
    if rtype == "budget":
        amount = node.float("amount", min=0.0)
        limit = round(amount * NANOS) if amount is not None else None
        if limit is not None and not 1 <= limit <= 10**15:
            node.error("amount", "must be more than 0 and at most 1000000 (in the pricing currency)")
    else:
        limit = node.int("limit", min=1)
    scope = node.str_list("scope", ("tenant",))
    for s in scope:
        if s not in SCOPES:
            node.error("scope", f"unknown scope {s!r} (one or more of {', '.join(SCOPES)})")
    if "global" in scope and len(scope) > 1:
        node.error("scope", "global cannot be combined with other scopes")
    fail_mode = node.str("fail_mode", "local", choices=FAIL_MODES)
    kwargs: dict[str, Any] = {"limit": limit or 0, "scope": tuple(scope), "fail_mode": fail_mode}
    if rtype == "request_limit":
        kwargs["per"] = node.str("per", "minute", choices=("second", "minute", "hour", "day"))
        kwargs["algorithm"] = node.str("algorithm", "sliding_window", choices=ALGORITHMS)
    elif rtype == "token_limit":
        kwargs["per"] = node.str("per", "minute", choices=("minute", "hour", "day", "month"))
        kwargs["on_exceed"] = node.str("on_exceed", "cut", choices=ON_EXCEED)
        kwargs["count"] = node.str("count", "total", choices=TOKEN_COUNTS)
        kwargs["algorithm"] = (
            "fixed_window" if kwargs["per"] == "month" else node.str("algorithm", "sliding_window", choices=ALGORITHMS)
        )
    elif rtype == "connection_limit":
        kwargs["queue_timeout"] = node.duration("queue_timeout", 0.0, positive=False)
        if kwargs["queue_timeout"] is not None and kwargs["queue_timeout"] > 300:
            node.error("queue_timeout", "must be at most 5m")
    elif rtype == "budget":
        kwargs["per"] = node.str("per", "month", choices=("hour", "day", "month"))
        kwargs["window"] = node.str("window", "calendar", choices=BUDGET_WINDOWS)
        kwargs["algorithm"] = "fixed_window" if kwargs["window"] == "calendar" else "sliding_window"
        kwargs["on_exceed"] = node.str("on_exceed", "cut", choices=ON_EXCEED)
    elif rtype == "quota":
        kwargs["per"] = "month"
        kwargs["algorithm"] = "fixed_window"
        kwargs["unit"] = node.str("unit", "requests", choices=QUOTA_UNITS)
    node.finish()
    return RuleSpec(**common, **kwargs)


def parse_rules(root: Node, problems: Problems) -> RulesConfig:
    namespaces: list[NamespaceSpec] = []
    for name, node in root.named("namespaces", name_pattern=NAME):
        if name == DEFAULT_NAMESPACE:
            node.error(
                "", f"{DEFAULT_NAMESPACE!r} is the namespace of requests no matcher claims; it takes no matchers"
            )
        matchers = []
        for _i, item, path in node.items("matchers"):
            m = _matcher(Node(item, path, problems))
            if m is not None:
                matchers.append(m)
        if not matchers:
            node.error("matchers", "at least one matcher is required")
        namespaces.append(NamespaceSpec(name=name, priority=node.int("priority", 0), matchers=tuple(matchers)))
        node.finish()
    namespace_names = {ns.name for ns in namespaces} | {DEFAULT_NAMESPACE}
    rules = []
    for name, node in root.named("rules", name_pattern=NAME):
        rule = _rule(name, node, namespace_names)
        if rule is not None:
            rules.append(rule)
    limits = root.child("admission")
    default_max_tokens = limits.int("default_max_tokens", 4096, min=1)
    limits.finish()
    # Stable order: priority (higher first), then the order written in the file.
    namespaces.sort(key=lambda ns: -ns.priority)
    rules.sort(key=lambda r: -r.priority)
    return RulesConfig(namespaces=tuple(namespaces), rules=tuple(rules), default_max_tokens=default_max_tokens)
