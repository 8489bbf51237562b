"""The config-center API's bodies and answers: namespaces, matchers, rules and their ``rule_config`` shapes, counters.

Bodies take every field as optional: a POST must then give the required ones
(checked by the routes, naming the field), a PUT changes the fields it gives.
``id``, ``namespace_id``, ``created_at`` and ``updated_at`` are set by the
gateway and ignored in a body, so a script may PUT back what it read.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, JsonValue, Strict

from tollgate.admin.models import Body, Problem, View, parse
from tollgate.config.rules import NAME
from tollgate.errors import BadRequest

__all__ = [
    "CenterCounter",
    "CenterDeleted",
    "CenterHealth",
    "MatcherBody",
    "MatcherList",
    "MatcherView",
    "NamespaceBody",
    "NamespaceList",
    "NamespaceView",
    "RuleBody",
    "RuleList",
    "RuleView",
    "check_matcher",
    "check_rule_config",
    "refused",
]

Status = Literal[0, 1]
Count = Annotated[int, Strict(), Field(ge=1)]
Text = Annotated[str, Strict()]
ReadOnly = Annotated[JsonValue, Field(description="set by the gateway; ignored in a body")]
MatcherType = Literal["header", "body", "header_and_body"]
MatchOperator = Literal["equals", "contains", "regex", "in", "not_equals"]
CenterRuleType = Literal["connection_limit", "request_limit", "token_limit", "field_check"]
CheckOperator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "contains", "regex"]
READ_ONLY = ("id", "namespace_id", "created_at", "updated_at", "source", "native_rules")


def refused(prefix: str = "") -> Any:
    """A refusal naming every problem with its field (under ``prefix``: ``rule_config.``)."""

    def refuse(problems: list[Problem]) -> BadRequest:
        named = [Problem(prefix + p.path if p.path else prefix.rstrip("."), p.message) for p in problems]
        if not named[0].path:
            return BadRequest("send a JSON object", code="invalid_input")
        return BadRequest("invalid input: " + "; ".join(map(str, named)), param=named[0].path, code="invalid_input")

    return refuse


class _Kept(Body):
    """What the gateway sets on each object it keeps (ignored in a body, shown in answers)."""

    id: ReadOnly = None
    created_at: ReadOnly = None
    updated_at: ReadOnly = None
    source: ReadOnly = None


class _InNamespace(_Kept):
    namespace_id: ReadOnly = None


class NamespaceBody(_Kept):
    """A namespace (channel): requests one of its enabled matchers claims get its rules."""

    namespace_code: Annotated[str, Strict(), Field(pattern=f"^{NAME}$")] | None = None
    """Its code: the native namespace's name; fixed once created."""
    namespace_name: Annotated[str, Strict(), Field(max_length=200)] | None = None
    description: Annotated[str, Strict(), Field(max_length=2000)] | None = None
    status: Status | None = None
    """1 enabled (default), 0 disabled: it matches nothing."""


class MatcherBody(_InNamespace):
    """A test that puts a request in the namespace; the namespace's matchers are alternatives."""

    matcher_name: Annotated[str, Strict(), Field(max_length=200)] | None = None
    matcher_type: MatcherType | None = None
    """header, body, or header_and_body: the value found in either the header or the body field."""
    match_field: Annotated[str, Strict(), Field(min_length=1)] | None = None
    """The header's name, or the body field's path (metadata.channel; a leading body. is dropped)."""
    match_operator: MatchOperator | None = None
    match_value: JsonValue = None
    """The value compared: a list (or comma-separated string) for in, a regular expression for regex."""
    priority: Annotated[int, Strict()] | None = None
    """Higher first."""
    status: Status | None = None


class RuleBody(_InNamespace):
    """A rule of the namespace: applied to the requests matched into it, counted per namespace."""

    rule_name: Annotated[str, Strict(), Field(max_length=200)] | None = None
    rule_type: CenterRuleType | None = None
    rule_config: dict[str, JsonValue] | Text | None = None
    """The type's fields, as an object or as a JSON string of one."""
    priority: Annotated[int, Strict()] | None = None
    status: Status | None = None
    native_rules: ReadOnly = None


class ConnectionLimitConfig(Body):
    max_connections: Count
    """Requests of the namespace in flight at once."""
    window_size: Count | None = None
    """Kept as sent; a connection is held for its request's life."""


class RequestLimitConfig(Body):
    max_requests_per_minute: Count | None = None
    max_requests_per_hour: Count | None = None


class TokenLimitConfig(Body):
    max_tokens_per_hour: Count | None = None
    """Input (prompt) tokens."""
    max_tokens_per_day: Count | None = None
    window_size: Count | None = None
    """Kept as sent; the windows are the hour and the day, sliding."""


class FieldCheckConfig(Body):
    field_path: Annotated[str, Strict(), Field(min_length=1)]
    """A body field: body.max_tokens."""
    operator: CheckOperator
    value: JsonValue
    message: Text | None = None
    """The 400's message when the check does not hold."""


_CONFIGS: dict[str, type[Body]] = {
    "connection_limit": ConnectionLimitConfig,
    "request_limit": RequestLimitConfig,
    "token_limit": TokenLimitConfig,
    "field_check": FieldCheckConfig,
}
_AT_LEAST_ONE = {
    "request_limit": ("max_requests_per_minute", "max_requests_per_hour"),
    "token_limit": ("max_tokens_per_hour", "max_tokens_per_day"),
}


def _regex(value: Any, where: str) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem(where, "must be a regular expression string")]
    try:
        re.compile(value)
    except re.error as exc:
        return [Problem(where, f"invalid regular expression: {exc}")]
    return []


def check_matcher(doc: dict[str, Any]) -> list[Problem]:
    """What is wrong with a whole matcher (after a PUT's fields are laid over the stored ones)."""
    problems = [
        Problem(f, "is required") for f in ("matcher_type", "match_field", "match_operator") if doc.get(f) is None
    ]
    op, value = doc.get("match_operator"), doc.get("match_value")
    if value is None:
        problems.append(Problem("match_value", "is required"))
    elif op == "in" and not isinstance(value, (list, str)):
        problems.append(Problem("match_value", "must be a list or a comma-separated string for in"))
    elif op == "regex":
        problems += _regex(value, "match_value")
    elif op in ("equals", "not_equals", "contains") and isinstance(value, (dict, list)):
        problems.append(Problem("match_value", f"must be a string or a number for {op}"))
    return problems


def check_rule_config(rule_type: str, raw: Any) -> dict[str, Any]:
    """The rule_config of ``rule_type`` as an object; BadRequest naming ``rule_config.<field>`` when it does not fit."""
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(
                f"invalid input: rule_config: is not valid JSON: {exc.msg}", param="rule_config", code="invalid_input"
            ) from None
    if not isinstance(raw, dict):
        raise BadRequest(
            "invalid input: rule_config: must be an object (or a JSON string of one)",
            param="rule_config",
            code="invalid_input",
        )
    model = _CONFIGS[rule_type]
    parse(model, raw, refused("rule_config."))
    problems: list[Problem] = []
    wanted = _AT_LEAST_ONE.get(rule_type)
    if wanted is not None and all(raw.get(k) is None for k in wanted):
        problems.append(Problem("rule_config", f"{rule_type} needs {' or '.join(wanted)}"))
    if rule_type == "field_check":
        path, op, value = raw["field_path"], raw["operator"], raw["value"]
        head = path.partition(".")[0]
        if head in ("header", "headers", "query"):
            problems.append(Problem("rule_config.field_path", "must name a body field (body.<path>)"))
        if value is None:
            problems.append(Problem("rule_config.value", "is required"))
        elif op == "regex":
            problems += _regex(value, "rule_config.value")
        elif op in ("gt", "gte", "lt", "lte") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(Problem("rule_config.value", f"must be a number for {op}"))
    if problems:
        raise BadRequest(
            "invalid input: " + "; ".join(map(str, problems)), param=problems[0].path, code="invalid_input"
        )
    return dict(raw)


# -- answers --------------------------------------------------------------------


class _Object(View):
    id: int
    created_at: str | None = None
    updated_at: str | None = None
    source: str
    """api: created through /api/v1; config, config+api or the native admin API's: declared elsewhere (read-only)."""


class NamespaceView(_Object):
    namespace_code: str
    namespace_name: str
    description: str
    status: Status


class MatcherView(_Object):
    namespace_id: int
    matcher_name: str
    matcher_type: str
    match_field: str
    match_operator: str
    match_value: JsonValue
    priority: int
    status: Status


class RuleView(_Object):
    namespace_id: int
    rule_name: str
    rule_type: str
    rule_config: dict[str, JsonValue]
    priority: int
    status: Status
    native_rules: list[str]
    """The native rules it is enforced as (GET /admin/rules/<name>)."""


class NamespaceList(View):
    object: Literal["list"]
    data: list[NamespaceView]


class MatcherList(View):
    object: Literal["list"]
    data: list[MatcherView]


class RuleList(View):
    object: Literal["list"]
    data: list[RuleView]


class CenterDeleted(View):
    id: int
    deleted: bool
    matchers: list[int] | None = None
    rules: list[int] | None = None
    """A deleted namespace's matchers and rules, deleted with it."""


class _CounterLimit(View):
    rule: str
    window: str | None
    unit: str
    limit: int
    used: int
    remaining: int
    reset_ms: int


class CenterCounter(View):
    counter_key: str
    rule_id: int
    rule_type: str
    scope: dict[str, str]
    store: str
    counters: list[_CounterLimit]
    """One per limit of the rule (a request_limit with both windows has two)."""


class CenterHealth(View):
    status: Literal["healthy", "degraded"]
    storage: dict[str, Literal["healthy", "unhealthy", "embedded", "not_configured"]]
    """redis (the limiter's stores; embedded: none configured, the in-process engine), database, registry."""
