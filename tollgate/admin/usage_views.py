"""The accounting answers of the admin API as typed models for the document: usage, quotas, audit, SLA, prices."""

from __future__ import annotations

from pydantic import Field, JsonValue, RootModel

from tollgate.admin.models import View

__all__ = [
    "AuditEvents",
    "EndUserUsage",
    "EndUsers",
    "PriceTable",
    "Quota",
    "SlaReport",
    "TenantUsage",
    "Usage",
]

_PERIOD = "the month, YYYY-MM (UTC)"


class Amounts(View):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float = Field(description="in the pricing currency")


class EndUserAmounts(Amounts):
    errors: int


class BilledAmounts(Amounts):
    cached_tokens: int = Field(description="the part of prompt_tokens read from a prompt cache")
    cache_write_tokens: int = Field(description="the part of prompt_tokens written to a prompt cache")


class Estimated(View):
    """What was counted from estimates, the response carrying no usage."""

    requests: int
    prompt_tokens: int
    completion_tokens: int


class CacheSavings(View):
    """Requests answered from the gateway's response cache (counted in requests, billed at the cache's price)."""

    hits: int
    saved_tokens: int = Field(description="the tokens of the answers replayed, that no upstream produced again")
    saved_cost: float = Field(description="those tokens at the model's prices, in the pricing currency")


class UsageTotals(EndUserAmounts):
    cached_tokens: int = Field(description="the part of prompt_tokens read from a prompt cache")
    cache_write_tokens: int = Field(description="the part of prompt_tokens written to a prompt cache")
    estimated: Estimated
    by_model: dict[str, BilledAmounts]
    response_cache: CacheSavings


class TenantUsage(UsageTotals):
    """A tenant's usage in a month: totals, by model and by day."""

    tenant: str
    period: str = Field(description=_PERIOD)
    currency: str
    by_day: dict[str, UsageTotals] = Field(description="by UTC day, YYYY-MM-DD")


class EndUserUsage(EndUserAmounts):
    """One end user's usage in a month (zeros when none was kept for it)."""

    tenant: str
    period: str = Field(description=_PERIOD)
    currency: str
    user: str


class Usage(RootModel[TenantUsage | EndUserUsage]):
    """The tenant's usage; with user=, that end user's."""


class EndUsers(View):
    """Every end user kept apart in the month, and the rest added up as other."""

    tenant: str
    period: str = Field(description=_PERIOD)
    currency: str
    max_end_users: int
    users: dict[str, EndUserAmounts]
    other: EndUserAmounts = Field(description="the end users past max_end_users this month, added up")


class QuotaStatus(View):
    quota: str
    used: float
    limit: float
    percent: float


class Quota(View):
    """Used, limit and percent of every quota of the tenant this month, and the alerts fired."""

    tenant: str
    period: str = Field(description=_PERIOD)
    plan: str | None
    quotas: list[QuotaStatus]
    alerts_fired: list[str]


class AuditEvent(View):
    id: str
    ts: float = Field(description="epoch seconds")
    kind: str
    actor: str | None
    tenant: str | None
    target: str | None
    before: JsonValue = Field(description="the subject before the change, without secrets")
    after: JsonValue = Field(description="the subject after the change, without secrets")
    detail: JsonValue


class AuditEvents(View):
    """Audit events, newest first."""

    events: list[AuditEvent]


class PlanSla(View):
    target_p99_ms: float | None
    observed_p99_ms: float | None
    window: int = Field(description="how many recent requests the p99 is taken over")
    requests: int
    violations: int
    met: bool | None


class SlaReport(View):
    """The gateway's overhead against each plan's p99 target, on this process since it started."""

    plans: dict[str, PlanSla]
    note: str


class Price(View):
    input_per_1k: float
    output_per_1k: float
    cached_input_per_1k: float = Field(description="prompt tokens read from a prompt cache (the input price if unset)")
    cache_write_per_1k: float = Field(description="prompt tokens written to a prompt cache (the input price if unset)")


class ResourceCost(View):
    resource: str
    unit_cost: float
    billing_unit: int
    enabled: bool
    models: list[str] | None


class PriceTable(View):
    """The price table and cost rules in force."""

    currency: str
    models: dict[str, Price]
    default: Price
    resources: list[ResourceCost]
