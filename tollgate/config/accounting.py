"""Config sections of accounting: ``usage:``, ``pricing:``, ``quotas:``, ``alerts:``, ``metrics:``, ``access_log:``, ``audit:``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, Strict

from tollgate.config.validation import Doc, Found, check, section
from tollgate.config.values import Bool, Duration, NonEmptyStr, OptionalDuration, Share, Str, StrList, matching

__all__ = [
    "QUOTA_NAMES",
    "RESOURCES",
    "AccessLogConfig",
    "AccountingConfig",
    "AccountingSections",
    "AlertsConfig",
    "AuditConfig",
    "CostRule",
    "CostRuleDoc",
    "MetricsConfig",
    "MetricsDoc",
    "Price",
    "PricingConfig",
    "PricingDoc",
    "QuotaSpend",
    "QuotasConfig",
    "Threshold",
    "UsageConfig",
    "WebhookConfig",
    "build_accounting",
]

# What a cost rule can charge for, per ``billing_unit`` of it.
RESOURCES = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
QUOTA_NAMES = ("monthly_requests", "monthly_tokens", "monthly_spend")
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}"
_DAY = 86400.0
Name = Annotated[str, matching(_NAME)]
Amount = Annotated[float, Strict(), Field(ge=0.0)]


@section
@dataclass(frozen=True, slots=True)
class UsageConfig:
    """Where per-tenant aggregates go and how often the batch is flushed."""

    backend: Literal["auto", "redis", "file", "memory"] = "auto"
    """auto: redis when the store is redis (or url is set), else file when path is set, else memory."""
    url: Str | None = None
    """Default: the store's URL."""
    path: Str | None = None
    """The aggregate file of the file backend; relative to the config file; safe to share between local
    processes (flock)."""
    flush_interval: Duration = 1.0
    """Also the most a crash can lose."""
    batch_size: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1000
    """A flush starts early once this many records wait."""
    max_pending: Annotated[int, Strict(), Field(ge=1, le=100_000_000)] = 100_000
    """Records held between flushes; beyond, new ones are dropped and counted."""
    daily_ttl: Duration = 40 * _DAY
    monthly_ttl: Duration = 400 * _DAY
    key_prefix: NonEmptyStr = "tg:usage"
    max_end_users: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 10_000
    """End users of one tenant kept apart in a month's usage; later ones are added up as "other" (0: none)."""

    @check
    def backend_is_reachable(self) -> Found:
        if self.url is not None and urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
            yield "url", "must be a redis://, rediss:// or unix:// URL"
        if self.backend == "file" and self.path is None:
            yield "path", "is required when backend is file"

    @check
    def aggregates_outlive_their_period(self) -> Found:
        if self.daily_ttl < 2 * _DAY:
            yield "daily_ttl", "must be at least 2d (a day's aggregate must outlive its day)"
        if self.monthly_ttl < 32 * _DAY:
            yield "monthly_ttl", "must be at least 32d (a month's aggregate must outlive its month)"


@section
@dataclass(frozen=True, slots=True)
class Price:
    """Price of one model, in the pricing currency per 1,000 tokens."""

    input_per_1k: Amount = 0.0
    """Prompt tokens neither read from nor written to the provider's prompt cache."""
    output_per_1k: Amount = 0.0
    """Completion tokens, reasoning tokens included."""
    cached_input_per_1k: Amount | None = None
    """Prompt tokens read from the provider's prompt cache (OpenAI's cached_tokens, Anthropic's
    cache_read_input_tokens). Absent: input_per_1k (no discount)."""
    cache_write_per_1k: Amount | None = None
    """Prompt tokens written to the provider's prompt cache (Anthropic's cache_creation_input_tokens).
    Absent: input_per_1k (no surcharge)."""

    @property
    def cached_input(self) -> float:
        """The price of a cache read per 1,000 tokens, the input price when none is set."""
        return self.input_per_1k if self.cached_input_per_1k is None else self.cached_input_per_1k

    @property
    def cache_write(self) -> float:
        """The price of a cache write per 1,000 tokens, the input price when none is set."""
        return self.input_per_1k if self.cache_write_per_1k is None else self.cache_write_per_1k


@dataclass(frozen=True, slots=True)
class CostRule:
    """A charge per resource, added to the model price: ``unit_cost`` per ``billing_unit`` units of ``resource``."""

    resource: str
    unit_cost: float
    billing_unit: int = 1
    enabled: bool = True
    models: tuple[str, ...] | None = None  # None: every model


class CostRuleDoc(Doc):
    """A charge per resource, added to the model price: unit_cost per billing_unit units of resource."""

    resource: Literal["requests", "prompt_tokens", "completion_tokens", "total_tokens"] = "requests"
    unit_cost: Amount
    billing_unit: Annotated[int, Strict(), Field(ge=1, le=10**12)] = 1
    enabled: Bool = True
    models: StrList | None = None
    """Absent: every model."""


@dataclass(frozen=True, slots=True)
class PricingConfig:
    currency: str = "USD"
    models: Mapping[str, Price] = field(default_factory=dict)
    default: Price = Price()
    resources: tuple[CostRule, ...] = ()


class PricingDoc(Doc):
    currency: Annotated[str, Strict(), matching(r"[A-Z]{3}")] = "USD"
    models: Mapping[Name, Price] = {}
    """The served model is priced (after a fallback, the fallback's price): a public model or a deployment's
    model name."""
    default: Price = Price()
    resources: tuple[CostRuleDoc, ...] = ()
    """Cost rules added to the model price."""


@section
@dataclass(frozen=True, slots=True)
class QuotaSpend:
    """Spend quota per month, in the pricing currency (``None``: no spend quota)."""

    monthly_spend: Amount | None = None


@section
@dataclass(frozen=True, slots=True)
class QuotasConfig:
    """Spend quotas by plan and by tenant, enforced at admission (a budget named quota.monthly_spend); request and
    token quotas come from the plan's limits."""

    plans: Mapping[Name, QuotaSpend] = field(default_factory=dict)
    tenants: Mapping[Name, QuotaSpend] = field(default_factory=dict)

    def spend_limit(self, tenant: str, plan: str | None) -> float | None:
        t = self.tenants.get(tenant)
        if t is not None and t.monthly_spend is not None:
            return t.monthly_spend
        p = self.plans.get(plan) if plan is not None else None
        return p.monthly_spend if p is not None else None


@section
@dataclass(frozen=True, slots=True)
class Threshold:
    percent: Annotated[float, Strict(), Field(ge=1.0, le=1000.0)]
    severity: Literal["info", "warning", "high", "critical"]


DEFAULT_THRESHOLDS = (Threshold(80.0, "warning"), Threshold(90.0, "high"), Threshold(95.0, "critical"))


@section
@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: NonEmptyStr
    secret: Str | None = field(default=None, repr=False)
    """Signs each delivery; at least 16 characters."""
    timeout: Duration = 5.0
    retries: Annotated[int, Strict(), Field(ge=0, le=20)] = 3
    backoff: Duration = 0.5
    """First retry delay; doubles each retry."""
    max_queue: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 1000

    @check
    def url_and_secret_are_usable(self) -> Found:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            yield "url", "must be an absolute http:// or https:// URL"
        if self.secret is not None and len(self.secret) < 16:
            yield "secret", "must be at least 16 characters"


def _by_percent(thresholds: tuple[Threshold, ...]) -> tuple[Threshold, ...]:
    return tuple(sorted(thresholds, key=lambda t: t.percent))


@section
@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """One alert per threshold per period, across every gateway process."""

    enabled: Bool = True
    thresholds: Annotated[tuple[Threshold, ...], AfterValidator(_by_percent)] = DEFAULT_THRESHOLDS
    """Percent of a quota used."""
    webhook: WebhookConfig | None = None

    @check
    def thresholds_are_distinct(self) -> Found:
        percents = [t.percent for t in self.thresholds]
        if len(set(percents)) != len(percents):
            yield "thresholds", "percent values must be distinct"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    # all: every tenant is a label value; top: the first ``top_n`` tenants this process sees, plus ``tenants``, others "other".
    tenant_labels: str = "all"
    top_n: int = 50
    tenants: tuple[str, ...] = ()
    # Latency SLA: p99 target of gateway overhead per plan (seconds); ``sla_default`` for plans not listed.
    sla_default: float | None = None
    sla_plans: Mapping[str, float] = field(default_factory=dict)

    def sla_target(self, plan: str) -> float | None:
        return self.sla_plans.get(plan, self.sla_default)


class SlaDoc(Doc):
    """Latency SLA: the p99 target of gateway overhead; violations counted."""

    default: OptionalDuration = None
    """For plans not listed."""
    plans: Mapping[str, Duration] = {}


class MetricsDoc(Doc):
    """Prometheus at /metrics on the admin listener."""

    enabled: Bool = True
    tenant_labels: Literal["all", "top"] = "all"
    """all: every tenant is a label value; top: the first top_n tenants this process sees (plus tenants) keep
    their label, the rest are "other"."""
    top_n: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 50
    tenants: StrList = ()
    sla: SlaDoc = SlaDoc()


@section
@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """One JSON line per request; never keys or bodies."""

    enabled: Bool = True
    path: NonEmptyStr = "-"
    """"-": standard output."""
    sample: Share = 1.0
    """Fraction of successful requests logged."""
    errors: Bool = True
    """Log every request with status >= 400 or a client disconnect, whatever sample says."""


@section
@dataclass(frozen=True, slots=True)
class AuditConfig:
    backend: Literal["auto", "redis", "file", "memory"] = "auto"
    """auto: a capped Redis stream when usage goes to Redis, else path (JSON lines), else memory."""
    path: Str | None = None
    max_entries: Annotated[int, Strict(), Field(ge=10, le=100_000_000)] = 100_000
    stream_key: NonEmptyStr = "tg:audit"
    auth_failure_burst: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 20
    """A burst of failed authentication from one client address: this many 401s within auth_failure_window."""
    auth_failure_window: Duration = 60.0

    @check
    def file_backend_has_a_path(self) -> Found:
        if self.backend == "file" and self.path is None:
            yield "path", "is required when backend is file"


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    usage: UsageConfig = UsageConfig()
    pricing: PricingConfig = PricingConfig()
    quotas: QuotasConfig = QuotasConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    audit: AuditConfig = AuditConfig()


class AccountingSections(Doc):
    """The accounting sections of a config file: usage, pricing, quotas, alerts, metrics, access_log, audit."""

    usage: UsageConfig = UsageConfig()
    pricing: PricingDoc = PricingDoc()
    quotas: QuotasConfig = QuotasConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsDoc = MetricsDoc()
    access_log: AccessLogConfig = AccessLogConfig()
    audit: AuditConfig = AuditConfig()


def priced_model_problems(pricing: PricingDoc, models: Mapping[str, Any]) -> Found:
    """A price names a public model or a deployment's model name."""
    known = set(models)
    for m in models.values():
        known.update(d.model or "" for d in getattr(m, "deployments", ()))
    for name in pricing.models:
        if name not in known:
            yield f"pricing.models.{name}", f"unknown model {name!r} (a public model or a deployment's model name)"


def build_accounting(doc: AccountingSections) -> AccountingConfig:
    pricing = doc.pricing
    metrics = doc.metrics
    return AccountingConfig(
        usage=doc.usage,
        pricing=PricingConfig(
            currency=pricing.currency,
            models=dict(pricing.models),
            default=pricing.default,
            resources=tuple(
                CostRule(r.resource, r.unit_cost, r.billing_unit, r.enabled, r.models) for r in pricing.resources
            ),
        ),
        quotas=doc.quotas,
        alerts=doc.alerts,
        metrics=MetricsConfig(
            enabled=metrics.enabled,
            tenant_labels=metrics.tenant_labels,
            top_n=metrics.top_n,
            tenants=metrics.tenants,
            sla_default=metrics.sla.default,
            sla_plans=dict(metrics.sla.plans),
        ),
        access_log=doc.access_log,
        audit=doc.audit,
    )
