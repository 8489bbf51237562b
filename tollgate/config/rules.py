"""The ``namespaces:``, ``rules:`` and ``admission:`` sections: channels picked by matchers, the limits attached."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, Strict

from tollgate.config.reader import Node
from tollgate.config.validation import Doc, Found, Problems, check, section, validate
from tollgate.config.values import Bool, DurationOrZero, Int, NonEmptyStr, Str, StrList, matching

__all__ = [
    "BUDGET_WINDOWS",
    "DEFAULT_NAMESPACE",
    "FIELD_CHECK_OPS",
    "MATCHER_OPS",
    "NANOS",
    "PERIODS",
    "ROLLING_MONTH_MS",
    "RULE_TYPES",
    "SCOPES",
    "TOKEN_COUNTS",
    "AdmissionDoc",
    "Attach",
    "MatcherSpec",
    "NamespaceDoc",
    "NamespaceSpec",
    "RuleDoc",
    "RuleSpec",
    "RulesConfig",
    "RulesSections",
    "build_rules",
    "parse_rules",
]

NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
MatcherOp = Literal["equals", "not_equals", "contains", "regex", "in", "exists"]
FieldCheckOp = Literal["eq", "ne", "gt", "gte", "lt", "lte", "contains", "regex", "exists", "max_length"]
RuleType = Literal["request_limit", "token_limit", "connection_limit", "quota", "budget", "field_check"]
MATCHER_OPS: tuple[str, ...] = get_args(MatcherOp)
FIELD_CHECK_OPS: tuple[str, ...] = get_args(FieldCheckOp)
RULE_TYPES: tuple[str, ...] = get_args(RuleType)
SCOPES = ("global", "plan", "tenant", "key", "user", "ip", "namespace", "model")
PERIODS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000, "month": 0}
# What a token_limit counts: input (prompt) tokens, output (completion) tokens, or both.
TOKEN_COUNTS = ("total", "input", "output")
# A budget's window: calendar (the UTC hour, day or month) or rolling (the last hour, day or 30 days).
BUDGET_WINDOWS = ("calendar", "rolling")
ROLLING_MONTH_MS = 30 * 86_400_000
NANOS = 1_000_000_000  # a budget is kept in 1e-9 of the pricing currency, as costs are
DEFAULT_NAMESPACE = "default"
Name = Annotated[str, matching(NAME)]


@section
@dataclass(frozen=True, slots=True)
class MatcherSpec:
    """A test on the request: a header, a body field (a dotted path: metadata.channel, messages.0.role), or both."""

    type: Literal["header", "body", "header_and_body"]
    field: NonEmptyStr
    op: MatcherOp
    value: Any = None
    """The value compared (a list for in, a regular expression for regex, true or false for exists)."""
    header: Str | None = None
    """header_and_body: the header to test alongside the body field (same op and value)."""

    @check
    def value_fits_op(self) -> Found:
        if self.type == "header_and_body" and self.header is None:
            yield "header", "is required for type header_and_body (the header tested alongside the body field)"
        op, value = self.op, self.value
        if op != "exists" and value is None:
            yield "value", f"is required for op {op}"
        if op == "exists" and value is not None and not isinstance(value, bool):
            yield "value", "must be true or false for op exists (default true)"
        if op == "in" and not isinstance(value, list):
            yield "value", "must be a list for op in"
        if op == "regex":
            yield from _regex_problems(value)
        if op in ("equals", "not_equals", "contains") and isinstance(value, (dict, list)):
            yield "value", f"must be a scalar for op {op}"


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    name: str
    priority: int
    matchers: tuple[MatcherSpec, ...]
    enabled: bool = True
    match: str = "all"  # all: every matcher holds; any: one of them does


@section
@dataclass(frozen=True, slots=True)
class Attach:
    """Where a rule applies; a request gets the union of global, plan, tenant and namespace rules."""

    is_global: Annotated[bool, Strict(), Field(alias="global")] = False
    plans: StrList = ()
    tenants: StrList = ()
    namespaces: StrList = ()

    @check
    def names_somewhere(self) -> Found:
        if not (self.is_global or self.plans or self.tenants or self.namespaces):
            yield "", "must name at least one of global, plans, tenants, namespaces"


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
    # request_limit: refuse past the limit, or delay (a leaky bucket as a queue) up to max_delay seconds
    on_limit: str = "refuse"
    max_delay: float = 0.0
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


def _regex_problems(value: Any) -> Found:
    if not isinstance(value, str):
        yield "value", "must be a regular expression string"
        return
    try:
        re.compile(value)
    except re.error as exc:
        yield "value", f"invalid regular expression: {exc}"


class NamespaceDoc(Doc):
    """A channel: the first namespace, highest priority first, whose matchers hold claims the request."""

    priority: Int = 0
    matchers: tuple[MatcherSpec, ...] = ()
    match: Literal["all", "any"] = "all"
    """all: the request meets every matcher (default); any: it meets one of them (none listed: it matches nothing)."""
    enabled: Bool = True
    """false: the namespace matches nothing (its requests fall to the next namespace, or "default")."""

    @check
    def has_matchers(self) -> Found:
        if not self.matchers and self.match == "all" and self.enabled:
            yield "matchers", "at least one matcher is required (or match: any, which then matches nothing)"


# The keys each rule type reads besides type, attach, priority, enabled and shadow.
_RULE_KEYS = {
    "request_limit": ("limit", "scope", "fail_mode", "per", "algorithm", "on_limit", "max_delay"),
    "token_limit": ("limit", "scope", "fail_mode", "per", "on_exceed", "count", "algorithm"),
    "connection_limit": ("limit", "scope", "fail_mode", "queue_timeout"),
    "quota": ("limit", "scope", "fail_mode", "unit"),
    "budget": ("amount", "scope", "fail_mode", "per", "window", "on_exceed"),
    "field_check": ("field", "op", "value", "message"),
}
_TYPED_KEYS = tuple(dict.fromkeys(key for keys in _RULE_KEYS.values() for key in keys))
_PERIODS_OF = {
    "request_limit": ("second", "minute", "hour", "day"),
    "token_limit": ("minute", "hour", "day", "month"),
    "budget": ("hour", "day", "month"),
}


class RuleDoc(Doc):
    """A limit or check: its type, where it is attached, and the fields of its type."""

    type: RuleType
    attach: Attach
    priority: Int = 0
    """Higher first."""
    enabled: Bool = True
    shadow: Bool = False
    """Evaluate and count, never refuse."""
    limit: Annotated[int, Strict(), Field(ge=1)] | None = None
    """Units per window (requests, tokens, requests in flight); not for budget."""
    amount: Annotated[float, Strict(), Field(ge=0.0)] | None = None
    """budget: money per window, in the pricing currency."""
    per: Literal["second", "minute", "hour", "day", "month"] | None = None
    """The window: second|minute|hour|day (request_limit), minute|hour|day|month (token_limit), hour|day|month
    (budget); default minute (month for budget)."""
    algorithm: Literal["sliding_window", "gcra", "fixed_window"] | None = None
    scope: StrList | None = None
    """[global], or a combination of plan tenant key user ip namespace model; default [tenant]."""
    fail_mode: Literal["fail_open", "fail_closed", "local"] = "local"
    """When the store fails or sends nothing back within store.timeout: local (the in-process engine, the limit
    divided by store.instances), fail_open or fail_closed."""
    on_exceed: Literal["cut", "allow"] | None = None
    """What a stream does when the budget runs out: cut (default) or allow (settled afterwards)."""
    count: Literal["total", "input", "output"] | None = None
    """token_limit: what it counts; default total."""
    window: Literal["calendar", "rolling"] | None = None
    """budget: calendar (the UTC hour, day, month; default) or rolling (the last hour, day, 30 days)."""
    on_limit: Literal["refuse", "delay"] | None = None
    """request_limit: refuse (default: 429 past the limit) or delay: a leaky bucket as a queue, where a request over
    the rate waits its turn in a FIFO per scope and requests are released at exactly limit per window, across
    every gateway process sharing the store; one that would wait longer than max_delay gets 429."""
    max_delay: DurationOrZero | None = None
    """request_limit with on_limit: delay: the longest a request waits for its turn, at most 5m (default 10s)."""
    queue_timeout: DurationOrZero | None = None
    """connection_limit: how long a request over the limit waits for a lease, at most 5m (default 0: refuse)."""
    unit: Literal["requests", "tokens"] | None = None
    """quota: what it counts; default requests."""
    field: NonEmptyStr | None = None
    """field_check: the body field tested."""
    op: FieldCheckOp | None = None
    value: Any = None
    message: Str | None = None
    """field_check: the 400's message; default "request refused by rule <name>"."""

    @check
    def fields_fit_type(self) -> Found:
        allowed = _RULE_KEYS[self.type]
        for key in _TYPED_KEYS:
            if key in self.model_fields_set and key not in allowed:
                yield key, "unknown key"
        if self.type == "token_limit" and self.per == "month" and "algorithm" in self.model_fields_set:
            yield "algorithm", "unknown key"
        if self.type == "field_check":
            yield from self._field_check_problems()
            return
        if self.type == "budget":
            if self.amount is None:
                yield "amount", "is required"
            elif not 1 <= round(self.amount * NANOS) <= 10**15:
                yield "amount", "must be more than 0 and at most 1000000 (in the pricing currency)"
        elif self.limit is None:
            yield "limit", "is required"
        periods = _PERIODS_OF.get(self.type)
        if periods is not None and self.per is not None and self.per not in periods:
            yield "per", f"must be one of {', '.join(periods)} (got {self.per!r})"
        scope = self.scope or ()
        for s in scope:
            if s not in SCOPES:
                yield "scope", f"unknown scope {s!r} (one or more of {', '.join(SCOPES)})"
        if "global" in scope and len(scope) > 1:
            yield "scope", "global cannot be combined with other scopes"
        if self.queue_timeout is not None and self.queue_timeout > 300:
            yield "queue_timeout", "must be at most 5m"
        yield from self._shaping_problems()

    def _shaping_problems(self) -> Found:
        if self.on_limit != "delay":
            if self.max_delay is not None and self.type == "request_limit":
                yield "max_delay", "is for on_limit: delay only"
            return
        if self.algorithm is not None:
            yield "algorithm", "is not for on_limit: delay (a delayed limit is a leaky bucket of its own)"
        if self.max_delay is not None and self.max_delay > 300:
            yield "max_delay", "must be at most 5m"
        per_ms = PERIODS.get(self.per or "minute")
        if per_ms is not None and self.limit is not None and self.limit > per_ms * 1000:
            yield "limit", "a delayed limit releases at most one request per microsecond"

    def _field_check_problems(self) -> Found:
        if self.field is None:
            yield "field", "is required"
        if self.op is None:
            yield "op", "is required"
        elif self.op != "exists" and self.value is None:
            yield "value", f"is required for op {self.op}"
        if self.op == "regex":
            yield from _regex_problems(self.value)
        if self.op in ("gt", "gte", "lt", "lte", "max_length") and (
            isinstance(self.value, bool) or not isinstance(self.value, (int, float))
        ):
            yield "value", f"must be a number for op {self.op}"


def build_rule(name: str, doc: RuleDoc) -> RuleSpec:
    common: dict[str, Any] = {
        "name": name,
        "type": doc.type,
        "attach": doc.attach,
        "priority": doc.priority,
        "enabled": doc.enabled,
        "shadow": doc.shadow,
    }
    if doc.type == "field_check":
        return RuleSpec(
            **common,
            field=doc.field or "",
            op=doc.op or "",
            value=doc.value,
            message=doc.message if doc.message is not None else f"request refused by rule {name}",
        )
    limit = round(doc.amount * NANOS) if doc.type == "budget" and doc.amount is not None else doc.limit
    kwargs: dict[str, Any] = {"limit": limit or 0, "scope": doc.scope or ("tenant",), "fail_mode": doc.fail_mode}
    if doc.type == "request_limit":
        kwargs.update(per=doc.per or "minute", algorithm=doc.algorithm or "sliding_window")
        if doc.on_limit == "delay":
            kwargs.update(on_limit="delay", max_delay=10.0 if doc.max_delay is None else doc.max_delay)
    elif doc.type == "token_limit":
        per = doc.per or "minute"
        algorithm = "fixed_window" if per == "month" else doc.algorithm or "sliding_window"
        kwargs.update(per=per, on_exceed=doc.on_exceed or "cut", count=doc.count or "total", algorithm=algorithm)
    elif doc.type == "connection_limit":
        kwargs["queue_timeout"] = doc.queue_timeout or 0.0
    elif doc.type == "budget":
        window = doc.window or "calendar"
        kwargs.update(
            per=doc.per or "month",
            window=window,
            algorithm="fixed_window" if window == "calendar" else "sliding_window",
            on_exceed=doc.on_exceed or "cut",
        )
    elif doc.type == "quota":
        kwargs.update(per="month", algorithm="fixed_window", unit=doc.unit or "requests")
    return RuleSpec(**common, **kwargs)


class AdmissionDoc(Doc):
    default_max_tokens: Annotated[int, Strict(), Field(ge=1)] = 4096
    """Tokens reserved for the completion when a request names no max_tokens."""


class RulesSections(Doc):
    """The ``namespaces:``, ``rules:`` and ``admission:`` sections of a config file."""

    namespaces: Mapping[Name, NamespaceDoc] = {}
    """Channels: the first namespace, highest priority first, whose matchers all hold claims the request;
    otherwise it is in "default"."""
    rules: Mapping[Name, RuleDoc] = {}
    """Rules attached globally, to plans, tenants or namespaces; a request gets the union, all checked and
    consumed in one atomic store call."""
    admission: AdmissionDoc = AdmissionDoc()

    @check
    def default_namespace_takes_no_matchers(self) -> Found:
        if DEFAULT_NAMESPACE in self.namespaces:
            yield (
                f"namespaces.{DEFAULT_NAMESPACE}",
                f"{DEFAULT_NAMESPACE!r} is the namespace of requests no matcher claims; it takes no matchers",
            )

    @check
    def rules_name_known_namespaces(self) -> Found:
        known = set(self.namespaces) | {DEFAULT_NAMESPACE}
        for name, rule in self.rules.items():
            for ns in rule.attach.namespaces:
                if ns not in known:
                    yield f"rules.{name}.attach.namespaces", f"unknown namespace {ns!r}"


def build_rules(doc: RulesSections) -> RulesConfig:
    namespaces = [
        NamespaceSpec(name=n, priority=ns.priority, matchers=ns.matchers, enabled=ns.enabled, match=ns.match)
        for n, ns in doc.namespaces.items()
    ]
    rules = [build_rule(name, rule) for name, rule in doc.rules.items()]
    # Stable order: priority (higher first), then the order written in the file.
    namespaces.sort(key=lambda ns: -ns.priority)
    rules.sort(key=lambda r: -r.priority)
    return RulesConfig(
        namespaces=tuple(namespaces), rules=tuple(rules), default_max_tokens=doc.admission.default_max_tokens
    )


def parse_rules(root: Node, problems: Problems) -> RulesConfig:
    """The ``namespaces``, ``rules`` and ``admission`` sections of ``root`` (a document :class:`Node`)."""
    data = root.take(("namespaces", "rules", "admission"))
    doc = validate(RulesSections, data, root.path, problems)
    return build_rules(doc if doc is not None else RulesSections())
