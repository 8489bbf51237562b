"""Schemas of the bodies shaped like config entries (tenant, key, namespace, rule); the config parser validates them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import Field, JsonValue

from tollgate.admin.models import Body
from tollgate.config.identity import SUBDOMAIN, TENANT_ID
from tollgate.config.rules import (
    ALGORITHMS,
    BUDGET_WINDOWS,
    FAIL_MODES,
    FIELD_CHECK_OPS,
    MATCHER_OPS,
    MATCHER_TYPES,
    ON_EXCEED,
    PERIODS,
    QUOTA_UNITS,
    RULE_TYPES,
    SCOPES,
    TOKEN_COUNTS,
)

__all__ = [
    "Attach",
    "KeyInput",
    "Limits",
    "Matcher",
    "NamedNamespace",
    "NamedRule",
    "NamespaceInput",
    "Record",
    "RuleInput",
    "TenantInput",
    "TenantPatch",
    "body_schema",
]

Record = Literal["tenant", "tenant_patch", "key", "namespace", "named_namespace", "rule", "named_rule"]


def _one_of(choices: Iterable[str], description: str | None = None, *, required: bool = False) -> Any:
    """A string field that takes one of ``choices``."""
    if required:
        return Field(json_schema_extra={"enum": list(choices)}, description=description)
    return Field(None, json_schema_extra={"enum": [*choices, None]}, description=description)


_STATUS = ("active", "suspended")
_MODELS = "model names; null: "


class Limits(Body):
    """Limits and quotas; null: no such limit."""

    monthly_requests: int | None = Field(None, ge=0)
    monthly_tokens: int | None = Field(None, ge=0)
    concurrency: int | None = Field(None, ge=0)
    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    priority: int | None = Field(None, ge=0, description="priority class when the gateway sheds load (higher first)")
    max_header_priority: int | None = Field(
        None, ge=0, description="the highest class a client may ask for with X-Tollgate-Priority"
    )


class KeyInput(Body):
    """An API key to create; the gateway makes the key itself and shows it once."""

    name: str | None = None
    expires: str | float | None = Field(None, description="ISO 8601 time or epoch seconds")
    models: list[str] | None = Field(None, description=_MODELS + "whatever the tenant may use")


class TenantPatch(Body):
    """The fields of a tenant to change; a config-declared tenant changed here is the registry's from then on."""

    name: str | None = None
    plan: str | None = Field(None, description="a plan from the config's plans: (or the built-in tier table)")
    status: str | None = _one_of(_STATUS)
    subdomain: str | None = Field(None, pattern=f"^{SUBDOMAIN.pattern}$")
    allowed_models: list[str] | None = Field(None, description=_MODELS + "the plan's allowed models")
    limits: Limits | None = Field(None, description="per-tenant overrides of the plan's limits")
    metadata: dict[str, JsonValue] | None = Field(None, description="the operator's own data, kept as given")


class TenantInput(TenantPatch):
    """A tenant to create, with the keys to create with it (shown once)."""

    id: str = Field(pattern=f"^{TENANT_ID.pattern}$")
    plan: str = Field(description="a plan from the config's plans: (or the built-in tier table)")
    keys: list[KeyInput] | None = Field(None, description="keys to create with the tenant")


class Matcher(Body):
    """A test on a header or a body field."""

    type: str = _one_of(MATCHER_TYPES, required=True)
    field: str = Field(description="a header name, or a body path such as messages.0.role")
    op: str = _one_of(MATCHER_OPS, required=True)
    value: JsonValue = Field(
        None, description="required except for exists; a list for in; a regular expression for regex"
    )
    header: str | None = Field(None, description="header_and_body: the header tested alongside the body field")


class NamespaceInput(Body):
    """A namespace, shaped like an entry of the config file's namespaces: (its name is the path's)."""

    priority: int = 0
    matchers: list[Matcher] = Field(min_length=1)


class Attach(Body):
    """Where a rule applies."""

    global_: bool | None = Field(None, alias="global")
    plans: list[str] | None = None
    tenants: list[str] | None = None
    namespaces: list[str] | None = None


class RuleInput(Body):
    """A rule, shaped like an entry of the config file's rules: (its name is the path's)."""

    type: str = _one_of(RULE_TYPES, required=True)
    attach: Attach = Field(description="at least one of global, plans, tenants, namespaces")
    priority: int = 0
    enabled: bool = True
    shadow: bool = Field(False, description="evaluated and counted, never refuses")
    limit: int | None = Field(None, ge=1)
    per: str | None = _one_of(PERIODS)
    algorithm: str | None = _one_of(ALGORITHMS)
    scope: list[str] | None = Field(None, json_schema_extra={"items": {"type": "string", "enum": list(SCOPES)}})
    fail_mode: str | None = _one_of(FAIL_MODES)
    on_exceed: str | None = _one_of(ON_EXCEED)
    unit: str | None = _one_of(QUOTA_UNITS, "quota: what counts")
    count: str | None = _one_of(TOKEN_COUNTS, "token_limit: which tokens count")
    amount: float | None = Field(None, gt=0, description="budget: money per window, in the pricing currency")
    window: str | None = _one_of(BUDGET_WINDOWS, "budget: UTC calendar window or the last hour/day/30 days")
    queue_timeout: str | float | None = Field(None, description="connection_limit: how long to wait for a lease")
    field: str | None = Field(None, description="field_check: the body path tested")
    op: str | None = _one_of(FIELD_CHECK_OPS, "field_check: the test")
    value: JsonValue = Field(None, description="field_check: the value the field is tested against")
    message: str | None = Field(None, description="field_check: the refusal's message")


class NamedNamespace(NamespaceInput):
    """A namespace to create, with its name."""

    name: str


class NamedRule(RuleInput):
    """A rule to create, with its name."""

    name: str


_RECORDS: dict[Record, type[Body]] = {
    "tenant": TenantInput,
    "tenant_patch": TenantPatch,
    "key": KeyInput,
    "namespace": NamespaceInput,
    "named_namespace": NamedNamespace,
    "rule": RuleInput,
    "named_rule": NamedRule,
}


def body_schema(record: Record) -> type[Body]:
    """The model whose schema describes a body shaped like the config's ``record`` entry.

    The one lookup the document makes for these bodies: when ``tollgate.config`` exports declarative models of its
    records, it returns those, and the descriptions in this module go.
    """
    return _RECORDS[record]
