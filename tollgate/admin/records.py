"""Bodies shaped like config entries (tenant, key, namespace, rule): the config file's own models, and the few admin-only shapes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field, JsonValue

from tollgate.admin.models import Body
from tollgate.config.identity import SUBDOMAIN, TENANT_ID, LimitsDoc, TenantFields
from tollgate.config.rules import (
    NamespaceDoc,
    RuleDoc,
)

__all__ = [
    "KeyInput",
    "Limits",
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


Limits = LimitsDoc


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


class TenantInput(TenantFields):
    """A tenant to create, shaped like an entry of the config file's tenants:, with the keys to create (shown once)."""

    id: str = Field(pattern=f"^{TENANT_ID.pattern}$")
    keys: list[KeyInput] | None = Field(None, description="keys to create with the tenant")


NamespaceInput = NamespaceDoc
RuleInput = RuleDoc


class NamedNamespace(NamespaceDoc):
    """A namespace to create, with its name."""

    name: str


class NamedRule(RuleDoc):
    """A rule to create, with its name."""

    name: str


_RECORDS: dict[Record, type[BaseModel]] = {
    "tenant": TenantInput,
    "tenant_patch": TenantPatch,
    "key": KeyInput,
    "namespace": NamespaceInput,
    "named_namespace": NamedNamespace,
    "rule": RuleInput,
    "named_rule": NamedRule,
}


def body_schema(record: Record) -> type[BaseModel]:
    """The model whose schema describes a body shaped like the config's ``record`` entry.

    The one lookup the document makes for these bodies: the config file's models (``tollgate.config``), which also
    validate them, wrapped only where an admin body differs (an id in the body, keys the gateway makes).
    """
    return _RECORDS[record]
