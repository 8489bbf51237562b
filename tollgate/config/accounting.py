"""Config sections of accounting: ``usage:``, ``pricing:``, ``quotas:``, ``alerts:``, ``metrics:``, ``access_log:``, ``audit:``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tollgate.config.reader import Node

__all__ = [
    "QUOTA_NAMES",
    "RESOURCES",
    "AccessLogConfig",
    "AccountingConfig",
    "AlertsConfig",
    "AuditConfig",
    "CostRule",
    "MetricsConfig",
    "Price",
    "PricingConfig",
    "QuotaSpend",
    "QuotasConfig",
    "Threshold",
    "UsageConfig",
    "WebhookConfig",
    "parse_accounting",
]

USAGE_BACKENDS = ("auto", "redis", "file", "memory")
# What a cost rule can charge for, per ``billing_unit`` of it.
RESOURCES = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")
QUOTA_NAMES = ("monthly_requests", "monthly_tokens", "monthly_spend")
SEVERITIES = ("info", "warning", "high", "critical")
TENANT_LABEL_MODES = ("all", "top")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class UsageConfig:
    """Where per-tenant aggregates go and how often the batch is flushed."""

    # auto: redis when store.backend is redis, else file when ``path`` is set, else memory.
    backend: str = "auto"
    url: str | None = None  # defaults to store.url
    path: str | None = None  # the aggregate file of the file backend
    flush_interval: float = 1.0
    batch_size: int = 1000  # a flush starts early once this many records wait
    max_pending: int = 100_000  # records held between flushes; beyond, new ones are dropped and counted
    daily_ttl: float = 40 * _DAY
    monthly_ttl: float = 400 * _DAY
    key_prefix: str = "tg:usage"
    # End users of one tenant kept apart in a month's usage; later ones are added up as "other" (0: no per-end-user usage).
    max_end_users: int = 10_000


@dataclass(frozen=True, slots=True)
class Price:
    """Price of one model, in the pricing currency per 1,000 tokens."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0


@dataclass(frozen=True, slots=True)
class CostRule:
    """A charge per resource, added to the model price: ``unit_cost`` per ``billing_unit`` units of ``resource``."""

    resource: str
    unit_cost: float
    billing_unit: int = 1
    enabled: bool = True
    models: tuple[str, ...] | None = None  # None: every model


@dataclass(frozen=True, slots=True)
class PricingConfig:
    currency: str = "USD"
    models: Mapping[str, Price] = field(default_factory=dict)
    default: Price = Price()
    resources: tuple[CostRule, ...] = ()


@dataclass(frozen=True, slots=True)
class QuotaSpend:
    """Spend quota per month, in the pricing currency (``None``: no spend quota)."""

    monthly_spend: float | None = None


@dataclass(frozen=True, slots=True)
class QuotasConfig:
    """Spend quotas by plan and by tenant; request and token quotas come from the plan's ``limits``."""

    plans: Mapping[str, QuotaSpend] = field(default_factory=dict)
    tenants: Mapping[str, QuotaSpend] = field(default_factory=dict)

    def spend_limit(self, tenant: str, plan: str | None) -> float | None:
        t = self.tenants.get(tenant)
        if t is not None and t.monthly_spend is not None:
            return t.monthly_spend
        p = self.plans.get(plan) if plan is not None else None
        return p.monthly_spend if p is not None else None


@dataclass(frozen=True, slots=True)
class Threshold:
    percent: float
    severity: str


DEFAULT_THRESHOLDS = (Threshold(80.0, "warning"), Threshold(90.0, "high"), Threshold(95.0, "critical"))


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: str | None = field(default=None, repr=False)
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.5  # first retry delay; doubles each retry
    max_queue: int = 1000


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    enabled: bool = True
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS
    webhook: WebhookConfig | None = None


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


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    enabled: bool = True
    path: str = "-"  # "-": standard output
    sample: float = 1.0  # fraction of successful requests logged
    errors: bool = True  # log every request with status >= 400 or a client disconnect, whatever ``sample`` says


@dataclass(frozen=True, slots=True)
class AuditConfig:
    # auto: a capped Redis stream when usage goes to Redis, else ``path`` (JSON lines), else memory.
    backend: str = "auto"
    path: str | None = None
    max_entries: int = 100_000
    stream_key: str = "tg:audit"
    # A burst of failed authentication from one client address: this many 401s within ``auth_failure_window``.
    auth_failure_burst: int = 20
    auth_failure_window: float = 60.0


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    usage: UsageConfig = UsageConfig()
    pricing: PricingConfig = PricingConfig()
    quotas: QuotasConfig = QuotasConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    access_log: AccessLogConfig = AccessLogConfig()
    audit: AuditConfig = AuditConfig()


def parse_accounting(root: Node, models: Mapping[str, Any]) -> AccountingConfig:
    """Read the accounting sections of the top-level node; ``models`` names the public models (for price checks)."""
    known_models = set(models)
    for m in models.values():
        known_models.update(d.model for d in getattr(m, "deployments", ()))
    return AccountingConfig(
        usage=_usage(root.child("usage")),
        pricing=_pricing(root.child("pricing"), known_models),
        quotas=_quotas(root.child("quotas")),
        alerts=_alerts(root.child("alerts")),
        metrics=_metrics(root.child("metrics")),
        access_log=_access_log(root.child("access_log")),
        audit=_audit(root.child("audit")),
    )


def _usage(node: Node) -> UsageConfig:
    d = UsageConfig()
    url = node.str("url", None)
    if url is not None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        node.error("url", "must be a redis://, rediss:// or unix:// URL")
    backend = node.str("backend", d.backend, choices=USAGE_BACKENDS)
    path = node.str("path", None)
    if backend == "file" and path is None:
        node.error("path", "is required when backend is file")
    cfg = UsageConfig(
        backend=backend,
        url=url,
        path=path,
        flush_interval=node.duration("flush_interval", d.flush_interval),
        batch_size=node.int("batch_size", d.batch_size, min=1, max=1_000_000),
        max_pending=node.int("max_pending", d.max_pending, min=1, max=100_000_000),
        daily_ttl=node.duration("daily_ttl", d.daily_ttl),
        monthly_ttl=node.duration("monthly_ttl", d.monthly_ttl),
        key_prefix=node.str("key_prefix", d.key_prefix),
        max_end_users=node.int("max_end_users", d.max_end_users, min=0, max=1_000_000),
    )
    if cfg.daily_ttl < 2 * _DAY:
        node.error("daily_ttl", "must be at least 2d (a day's aggregate must outlive its day)")
    if cfg.monthly_ttl < 32 * _DAY:
        node.error("monthly_ttl", "must be at least 32d (a month's aggregate must outlive its month)")
    node.finish()
    return cfg


def _price(node: Node) -> Price:
    p = Price(
        input_per_1k=node.float("input_per_1k", 0.0, min=0.0),
        output_per_1k=node.float("output_per_1k", 0.0, min=0.0),
    )
    node.finish()
    return p


def _pricing(node: Node, known_models: set[str]) -> PricingConfig:
    prices: dict[str, Price] = {}
    for name, child in node.named("models", name_pattern=_NAME):
        if name not in known_models:
            node.problems.add(child.path, f"unknown model {name!r} (a public model or a deployment's model name)")
        prices[name] = _price(child)
    default = _price(node.child("default"))
    rules: list[CostRule] = []
    for _i, item, path in node.items("resources"):
        r = Node(item, path, node.problems)
        models = r.str_list("models", None)
        rules.append(
            CostRule(
                resource=r.str("resource", "requests", choices=RESOURCES),
                unit_cost=r.float("unit_cost", min=0.0) or 0.0,
                billing_unit=r.int("billing_unit", 1, min=1, max=10**12),
                enabled=r.bool("enabled", True),
                models=models,
            )
        )
        r.finish()
    cfg = PricingConfig(
        currency=node.str("currency", "USD", pattern=re.compile(r"[A-Z]{3}")),
        models=prices,
        default=default,
        resources=tuple(rules),
    )
    node.finish()
    return cfg


def _spend(node: Node) -> QuotaSpend:
    q = QuotaSpend(monthly_spend=node.float("monthly_spend", None, min=0.0))
    node.finish()
    return q


def _quotas(node: Node) -> QuotasConfig:
    plans = {name: _spend(child) for name, child in node.named("plans", name_pattern=_NAME)}
    tenants = {name: _spend(child) for name, child in node.named("tenants", name_pattern=_NAME)}
    node.finish()
    return QuotasConfig(plans=plans, tenants=tenants)


def _alerts(node: Node) -> AlertsConfig:
    thresholds: list[Threshold] = []
    if node.has("thresholds"):
        for _i, item, path in node.items("thresholds"):
            t = Node(item, path, node.problems)
            thresholds.append(
                Threshold(
                    t.float("percent", min=1.0, max=1000.0) or 0.0, t.str("severity", choices=SEVERITIES) or "warning"
                )
            )
            t.finish()
        percents = [t.percent for t in thresholds]
        if len(set(percents)) != len(percents):
            node.error("thresholds", "percent values must be distinct")
    else:
        node.raw("thresholds")
        thresholds = list(DEFAULT_THRESHOLDS)
    webhook = None
    if node.has("webhook"):
        w = node.child("webhook")
        url = w.str("url")
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                w.error("url", "must be an absolute http:// or https:// URL")
        secret = w.str("secret", None)
        if secret is not None and len(secret) < 16:
            w.error("secret", "must be at least 16 characters")
        webhook = WebhookConfig(
            url=url or "",
            secret=secret,
            timeout=w.duration("timeout", 5.0),
            retries=w.int("retries", 3, min=0, max=20),
            backoff=w.duration("backoff", 0.5),
            max_queue=w.int("max_queue", 1000, min=1, max=1_000_000),
        )
        w.finish()
    cfg = AlertsConfig(
        enabled=node.bool("enabled", True),
        thresholds=tuple(sorted(thresholds, key=lambda t: t.percent)),
        webhook=webhook,
    )
    node.finish()
    return cfg


def _metrics(node: Node) -> MetricsConfig:
    sla = node.child("sla")
    sla_plans: dict[str, float] = {}
    raw_plans = sla.raw("plans") or {}
    if not isinstance(raw_plans, dict):
        sla.error("plans", "must be a mapping of plan names to durations")
    else:
        plans_node = Node(raw_plans, sla.at("plans"), node.problems)
        for name in raw_plans:
            value = plans_node.duration(str(name), None)
            if value is not None:
                sla_plans[str(name)] = value
        plans_node.finish()
    sla_default = sla.duration("default", None)
    sla.finish()
    cfg = MetricsConfig(
        enabled=node.bool("enabled", True),
        tenant_labels=node.str("tenant_labels", "all", choices=TENANT_LABEL_MODES),
        top_n=node.int("top_n", 50, min=1, max=100_000),
        tenants=node.str_list("tenants", ()),
        sla_default=sla_default,
        sla_plans=sla_plans,
    )
    node.finish()
    return cfg


def _access_log(node: Node) -> AccessLogConfig:
    cfg = AccessLogConfig(
        enabled=node.bool("enabled", True),
        path=node.str("path", "-"),
        sample=node.float("sample", 1.0, min=0.0, max=1.0),
        errors=node.bool("errors", True),
    )
    node.finish()
    return cfg


def _audit(node: Node) -> AuditConfig:
    d = AuditConfig()
    cfg = AuditConfig(
        backend=node.str("backend", "auto", choices=("auto", "redis", "file", "memory")),
        path=node.str("path", None),
        max_entries=node.int("max_entries", d.max_entries, min=10, max=100_000_000),
        stream_key=node.str("stream_key", d.stream_key),
        auth_failure_burst=node.int("auth_failure_burst", d.auth_failure_burst, min=1, max=1_000_000),
        auth_failure_window=node.duration("auth_failure_window", d.auth_failure_window),
    )
    if cfg.backend == "file" and cfg.path is None:
        node.error("path", "is required when backend is file")
    node.finish()
    return cfg
