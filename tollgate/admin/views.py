"""The admin API's answers as typed models, for the OpenAPI document: the error, tenants, keys, plans, rules, health."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import Field, JsonValue, RootModel

from tollgate.admin.models import View
from tollgate.admin.records import Limits, NamespaceInput, RuleInput, TenantPatch

__all__ = [
    "BulkCreated",
    "CreatedKey",
    "CreatedTenant",
    "DeleteReport",
    "Deleted",
    "Error",
    "Health",
    "KeyList",
    "KeyView",
    "Listing",
    "NamespaceDeleted",
    "NamespaceList",
    "NamespaceView",
    "OpenApi",
    "PlanList",
    "PlanView",
    "Readiness",
    "ReloadRefused",
    "Reloaded",
    "RuleCounter",
    "RuleDeleted",
    "RuleList",
    "RuleView",
    "TenantPage",
    "TenantView",
]

T = TypeVar("T")
Source = Literal["config", "api", "config+api"]


class ErrorDetail(View):
    message: str
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error")
    code: str | None = None
    param: str | None = Field(None, description="the field the error is about")


class Error(View):
    """The gateway's error answer, in OpenAI's shape."""

    error: ErrorDetail


class Listing(View, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]


# -- tenants, keys, plans ------------------------------------------------------------


class TenantView(TenantPatch):
    """A tenant as the registry holds it."""

    id: str
    plan: str
    created: float = Field(description="epoch seconds")
    source: Source = Field(description="config+api: declared in the file, changed here")
    keys: int = Field(description="how many API keys the tenant has")


class TenantPage(Listing[TenantView]):
    """A page of tenants, ordered by id."""

    has_more: bool
    next_after: str | None = Field(description="give it as after= for the next page")


class KeyView(View):
    """An API key (never the key itself)."""

    id: str
    tenant: str
    name: str
    created: float = Field(description="epoch seconds")
    expires: float | None = Field(description="epoch seconds; null: never")
    revoked: bool
    models: list[str] | None = Field(description="null: whatever the tenant may use")
    admin: bool = Field(description="the tenant's admin key: it may manage the tenant's keys on /v1/tollgate/keys")
    source: Literal["config", "api"]


class KeyList(Listing[KeyView]):
    """A tenant's API keys."""


class CreatedKey(KeyView):
    """A new API key, with the key itself: the only time it is shown."""

    key: str


class CreatedTenant(TenantView):
    """A new tenant, with the keys created with it (each shown this once)."""

    created_keys: list[CreatedKey]


class BulkKey(View):
    id: str
    tenant: str
    name: str
    key: str = Field(description="shown only in this answer")


class BulkCreated(View):
    """Every tenant created (all or none)."""

    created: int
    tenants: list[str]
    created_keys: list[BulkKey]


class StoreKeys(View):
    """The store keys of a tenant: its limiter counters and usage totals (none listed on the embedded store)."""

    store: Literal["embedded", "redis"]
    counters: list[str] | None = None
    usage: list[str] | None = None
    keys: list[str] | None = None
    note: str | None = None


class DeleteReport(View):
    """What a tenant's delete removed, or (dry_run) would remove."""

    tenant: str
    dry_run: bool
    keys: list[str] = Field(description="the ids of its API keys")
    store: StoreKeys


class PlanView(Limits):
    """A plan from the config file (or the built-in tier table)."""

    name: str
    description: str
    allowed_models: list[str] | None = Field(description="null: every configured model")


class PlanList(Listing[PlanView]):
    """The plans."""


# -- namespaces and rules --------------------------------------------------------------


class _InForce(View):
    name: str
    source: Source = Field(description="config+api: declared in the file, changed here")
    in_force: bool = Field(
        True, description="false: a runtime change that no longer fits the reloaded config file, left out (see the log)"
    )


class NamespaceView(NamespaceInput, _InForce):
    """A namespace, every default spelled out."""


class RuleView(RuleInput, _InForce):
    """A rule, every default spelled out."""


class NamespaceList(Listing[NamespaceView]):
    """Every namespace, the file's and the runtime's."""


class RuleList(Listing[RuleView]):
    """Every rule, the file's and the runtime's."""


class Deleted(View):
    object: Literal["namespace", "rule"]
    name: str
    deleted: Literal[True]


class _Reverted(View):
    reverted: Literal[True]


class RevertedNamespace(NamespaceView, _Reverted):
    """The file's version, in force again."""


class RevertedRule(RuleView, _Reverted):
    """The file's version, in force again."""


class NamespaceDeleted(RootModel[Deleted | RevertedNamespace]):
    """Deleted, or (revert) the file's version restored."""


class RuleDeleted(RootModel[Deleted | RevertedRule]):
    """Deleted, or (revert) the file's version restored."""


class RuleCounter(View):
    """A rule's counter for one scope, read without consuming anything."""

    rule: str
    type: str
    scope: dict[str, str]
    tenant: str | None = Field(description="the hash-tag group of the counter")
    store: str
    unit: Literal["requests", "tokens", "input_tokens", "output_tokens", "nanos"] = Field(
        description="nanos: a money budget, in 1e-9 of the pricing currency"
    )
    limit: int
    remaining: int
    used: int = Field(description="what the counter holds now, past the limit after an overdraft")
    overdraft: int = Field(description="used beyond the limit (usage settled after admission)")
    reset_ms: int = Field(description="ms until the counter is full again (or the window resets)")
    enabled: bool
    shadow: bool


# -- the process ------------------------------------------------------------------------


class Health(View):
    status: Literal["ok"]


class Readiness(View):
    status: Literal["ready", "degraded", "not ready"]
    config_version: int | None = None
    problems: list[str] | None = None
    # Stores that do not answer while the gateway still serves (limits by their fail modes, records buffered).
    degraded: list[str] | None = None


class Reloaded(View):
    status: Literal["reloaded"]
    config_version: int


class ReloadRefused(Error):
    """The config file was refused; the running config stays in force."""

    problems: list[str]


class OpenApi(RootModel[dict[str, JsonValue]]):
    """An OpenAPI 3.1 document."""
