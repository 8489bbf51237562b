"""Prometheus metrics of the gateway, in one process or across ``--workers`` processes.

Single process: every metric lives in a registry owned by the
:class:`GatewayMetrics` object (one per :class:`GatewayState`), never the
global default registry.

Several workers: the supervisor (tollgate/process/supervisor.py) gives every
worker the same ``PROMETHEUS_MULTIPROC_DIR`` in its environment, so the
variable is set before the worker's interpreter imports ``prometheus_client``
(the library chooses its storage at import time). It is the operator's
directory when one was set (emptied at start), else a temporary one the
supervisor removes when it exits. Each worker writes its values to
memory-mapped files there, and ``/metrics`` - worker 0 answers it on the admin
listener - merges the files of every worker with ``MultiProcessCollector``:
counters and histograms are summed over every worker that ever ran (a killed
worker's counts stay; its replacement counts on in files of its own), gauges
by their ``multiprocess_mode`` over the live workers (``livesum`` for queue
depths and requests in flight, ``livemax`` for breaker states, ``livemin`` for
deployment health), because the supervisor calls
``prometheus_client.multiprocess.mark_process_dead(pid)`` when a worker dies,
which drops that worker's live gauge files. This is the one case where metric
objects are not attached to our own registry: the library keeps multiprocess
values per metric name in those files, not in a registry. Each worker runs its
samplers at every accounting flush as well as before a scrape, so the gauges
of the workers that do not answer the scrape stay current too.

Label values come only from bounded sets, never from what a caller typed: a
model label is a model the config names (a public model or a deployment's
model), ``unknown`` when the request named none and ``other`` for any other
name; a deployment is ``upstream/model`` of the config; tenants are bounded by
:class:`TenantLabels`: ``all`` tenants, or the ``top_n`` first tenants this
process sees plus those listed, every other tenant reported as ``other``
(callers refused before identification count as ``anonymous``).
"""

from __future__ import annotations

import glob
import logging
import os
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from itertools import repeat
from operator import lt
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from tollgate.accounting.pricing import NANOS
from tollgate.accounting.tally import Tally
from tollgate.circuit_breaker import STATE_CODES
from tollgate.config.accounting import MetricsConfig

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "TenantLabels", "configured_models", "multiprocess_dir"]

log = logging.getLogger("tollgate.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
ANONYMOUS = "anonymous"  # the tenant of a request refused before it was identified
UNKNOWN_MODEL = "unknown"  # the model of a request that named none

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


# A worker's metric file holds at least its 8-byte header once prometheus_client has sized it.
_FILE_HEADER = 8


class _WorkerFiles:
    """Every worker's metric files merged, as ``MultiProcessCollector`` merges them, but for a file a worker is
    creating at this moment: prometheus_client creates it empty and sizes it just after, and the collector's read of
    an empty file raises (``struct.error``) and fails the whole scrape. One left empty by a worker killed in that
    moment would fail every scrape after it. An empty file has nothing recorded yet: it is skipped."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        files = []
        for name in glob.glob(os.path.join(self.path, "*.db")):
            try:
                if os.path.getsize(name) >= _FILE_HEADER:
                    files.append(name)
            except FileNotFoundError:  # a dead worker's live gauge file, removed since the listing
                continue
        merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def multiprocess_dir() -> str | None:
    """The multiprocess directory when the library really runs in multiprocess mode, else None."""
    # prometheus_client still honours the lower-case name it used to read, so the gateway does too.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112
    if path is None:
        return None
    if values.ValueClass is values.MutexValue:
        log.error(
            "PROMETHEUS_MULTIPROC_DIR is set but prometheus_client was imported before it was: metrics are per process"
        )
        return None
    return path


class TenantLabels:
    """Maps a tenant to its label value, keeping the number of distinct values bounded."""

    __slots__ = ("_all", "_top_n", "_listed", "_chosen")

    def __init__(self, config: MetricsConfig) -> None:
        self._all = config.tenant_labels == "all"
        self._top_n = config.top_n
        self._listed = frozenset(config.tenants)
        self._chosen: set[str] = set()

    def __call__(self, tenant: str) -> str:
        if self._all or tenant in self._listed or tenant in self._chosen or tenant == ANONYMOUS:
            return tenant
        if len(self._chosen) < self._top_n:
            self._chosen.add(tenant)
            return tenant
        return OTHER


def configured_models(config: Any) -> frozenset[str]:
    """The model names a config names: its public models and their deployments' models (the model label's values)."""
    names: set[str] = set()
    for name, model in getattr(config, "models", {}).items():
        names.add(name)
        names.update(d.model for d in model.deployments)
    return frozenset(names)


class GatewayMetrics:
    """The gateway's metrics; stages record through the methods here, scrape-time readers through :meth:`add_sampler`."""

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self.multiprocess_path = multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        reg = None if self.multiprocess_path else self.registry
        self.tenant_label = TenantLabels(config)
        self._samplers: list[Callable[[GatewayMetrics], None]] = []
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=reg)

        def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, registry=reg, buckets=buckets)

        def gauge(name: str, doc: str, labels: tuple[str, ...], mode: str) -> Gauge:
            return Gauge(name, doc, labels, registry=reg, multiprocess_mode=mode)  # type: ignore[arg-type]

        self.requests = counter(
            "tollgate_requests",
            "Requests by tenant, model and status (499: client went away).",
            ("tenant", "model", "status"),
        )
        self.request_seconds = histogram(
            "tollgate_request_duration_seconds", "Total time in the gateway per request.", ("tenant", "model"), _LATENCY
        )
        self.upstream_seconds = histogram(
            "tollgate_upstream_duration_seconds",
            "Time spent waiting on the upstream per request.",
            ("model", "upstream"),
            _LATENCY,
        )
        self.overhead_seconds = histogram(
            "tollgate_gateway_overhead_seconds",
            "Gateway overhead (total minus upstream) per request.",
            ("plan",),
            _OVERHEAD,
        )
        self.ttfb_seconds = histogram(
            "tollgate_time_to_first_byte_seconds",
            "Time from request arrival to the upstream's first byte.",
            ("model",),
            _LATENCY,
        )
        self.tokens = counter(
            "tollgate_tokens", "Tokens by tenant, model, kind and source.", ("tenant", "model", "kind", "source")
        )
        self.cost = counter("tollgate_cost", "Cost in the pricing currency.", ("tenant", "model", "currency"))
        self.limit_decisions = counter(
            "tollgate_limit_decisions", "Limit decisions by rule and outcome.", ("rule", "outcome")
        )
        self.degraded = counter(
            "tollgate_degraded_admissions",
            "Admissions decided without the store (fail_open / local).",
            ("rule", "mode"),
        )
        self.breaker_state = gauge(
            "tollgate_breaker_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            ("deployment",),
            "livemax",
        )
        self.deployment_healthy = gauge(
            "tollgate_deployment_healthy", "1 when the deployment is usable, 0 otherwise.", ("deployment",), "livemin"
        )
        self.queue_depth = gauge(
            "tollgate_queue_depth", "Requests or records waiting, per queue.", ("queue",), "livesum"
        )
        self.in_flight = gauge("tollgate_in_flight_requests", "Requests being served now.", (), "livesum")
        self.quota_alerts = counter("tollgate_quota_alerts", "Quota alerts fired.", ("tenant", "quota", "severity"))
        self.sla_violations = counter(
            "tollgate_sla_violations", "Requests whose gateway overhead exceeded the plan's p99 target.", ("plan",)
        )
        self.sla_target = gauge(
            "tollgate_sla_target_seconds", "The plan's p99 target for gateway overhead.", ("plan",), "livemax"
        )
        self.accounting_dropped = counter(
            "tollgate_accounting_dropped_records", "Usage records dropped because the pending queue was full.", ()
        )
        self.accounting_flushes = counter("tollgate_accounting_flushes", "Usage batch writes by outcome.", ("outcome",))
        self.webhook_deliveries = counter(
            "tollgate_alert_webhook_deliveries", "Alert webhook deliveries by outcome.", ("outcome",)
        )
        self.audit_events = counter("tollgate_audit_events", "Audit events recorded, by kind.", ("kind",))
        self.upstream_auth_failures = counter(
            "tollgate_upstream_auth_failures",
            "401/403 answers of an upstream to the gateway's own credential.",
            ("upstream", "status"),
        )
        self.http_refusals = counter(
            "tollgate_http_refused",
            "Requests and connections the public listener's HTTP server answered itself, by reason "
            "(bad_request, head_too_large, head_timeout, connection_limit).",
            ("reason",),
        )
        self.cache_lookups = counter(
            "tollgate_cache_requests", "Response cache lookups by result (hit, miss, bypass, stored).", ("result",)
        )
        self.cache_tokens_saved = counter("tollgate_cache_tokens_saved", "Tokens answered by response cache hits.", ())
        self.cache_bytes = gauge("tollgate_cache_bytes", "Bytes held by the in-process response cache.", (), "livesum")
        for plan, target in config.sla_plans.items():
            self.sla_target.labels(plan).set(target)

    # -- for other stages -------------------------------------------------
    def limit_decision(self, rule: str, outcome: str, n: int = 1) -> None:
        """Admission outcome of one rule (``allowed``, ``refused``, ``shadow_refused``, ...)."""
        self.limit_decisions.labels(rule, outcome).inc(n)

    def upstream_auth_failure(self, upstream: str, status: int) -> None:
        """An upstream refused the gateway's credential: a misconfiguration to alert on, not a tenant's error."""
        self.upstream_auth_failures.labels(upstream, str(status)).inc()

    def degraded_admission(self, rule: str, mode: str) -> None:
        """An admission decided without the store: ``mode`` is ``fail_open``, ``fail_closed`` or ``local``."""
        self.degraded.labels(rule, mode).inc()

    def http_refused(self, reason: str, n: int = 1) -> None:
        """The public HTTP server refused a request or a connection itself (a bounded set of reasons)."""
        self._child(self.http_refusals, reason).inc(n)

    def cache_result(self, result: str, tokens_saved: int = 0) -> None:
        """A response cache lookup's result (a bounded set: hit, miss, bypass, stored) and the tokens a hit saved."""
        self._child(self.cache_lookups, result).inc()
        if tokens_saved:
            self.cache_tokens_saved.inc(tokens_saved)

    def set_queue_depth(self, queue: str, depth: int) -> None:
        self.queue_depth.labels(queue).set(depth)

    def add_sampler(self, sampler: Callable[[GatewayMetrics], None]) -> None:
        """``sampler(metrics)`` runs before each scrape and each flush: it reads live state and sets gauges."""
        self._samplers.append(sampler)

    def sample(self) -> None:
        for sampler in self._samplers:
            try:
                sampler(self)
            except Exception:  # a broken reader must not break the scrape
                log.exception("metrics sampler %r failed", sampler)

    # -- from the accounting flusher ------------------------------------------
    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the library's lookup costs microseconds, a dict hit a tenth of one."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def apply(self, tally: Tally, currency: str, models: Collection[str] = frozenset()) -> None:
        """Count a flush's records: one update per distinct label set, however many records share it.

        ``models`` are the model names the config names (:func:`configured_models`): the model label of any other
        name is ``other``.
        """
        label = self.tenant_label
        target_of = self.config.sla_target
        counts: dict[tuple[Any, tuple[str, ...]], float] = defaultdict(int)
        observed: dict[tuple[Any, tuple[str, ...]], list[float]] = defaultdict(list)
        for (tenant_name, plan, priced, upstream, status, reported, _day), g in tally:
            tenant = label(tenant_name)  # groups are in first-seen order, as top_n needs
            model = UNKNOWN_MODEL if priced is None else priced if priced in models else OTHER
            plan = plan or "none"
            counts[(self.requests, (tenant, model, str(status)))] += g.requests
            observed[(self.request_seconds, (tenant, model))] += g.total_s
            if upstream is not None:
                observed[(self.upstream_seconds, (model, upstream))] += g.upstream_s
            observed[(self.overhead_seconds, (plan,))] += g.overhead_s
            if g.ttfb_s:
                observed[(self.ttfb_seconds, (model,))] += g.ttfb_s
            source = "reported" if reported else "estimated"
            if g.prompt_tokens:
                counts[(self.tokens, (tenant, model, "prompt", source))] += g.prompt_tokens
            if g.completion_tokens:
                counts[(self.tokens, (tenant, model, "completion", source))] += g.completion_tokens
            if g.cost_nanos:
                counts[(self.cost, (tenant, model, currency))] += g.cost_nanos / NANOS
            target = target_of(plan)
            if target is not None:
                violations = sum(map(lt, repeat(target), g.overhead_s))
                if violations:
                    counts[(self.sla_violations, (plan,))] += violations
        child = self._child
        for (metric, labels), n in counts.items():
            child(metric, *labels).inc(n)
        for (metric, labels), samples in observed.items():
            self._observe_many(child(metric, *labels), samples)

    @staticmethod
    def _observe_many(child: Any, values: list[float]) -> None:
        """``child.observe(v)`` for every value, with each bucket and the sum incremented once (multiprocess files too).

        This reads three attributes prometheus_client's histogram children
        keep (``_upper_bounds``, ``_buckets``, ``_sum``); a release that kept
        them otherwise gets one ``observe`` per value: slower, still right.
        """
        bounds = getattr(child, "_upper_bounds", None)
        buckets = getattr(child, "_buckets", None)
        total = getattr(child, "_sum", None)
        if bounds is None or buckets is None or total is None or len(buckets) != len(bounds):
            for v in values:
                child.observe(v)
            return
        # The library's rule: a value goes to the first bucket whose upper bound is >= it (the last bound is +Inf),
        # so bucket i holds the values v with bounds[i-1] < v <= bounds[i]: counted by bisection of the sorted values.
        ordered = sorted(values)
        below = 0
        for bucket, bound in zip(buckets, bounds):
            upto = bisect_right(ordered, bound, below)
            if upto > below:
                bucket.inc(upto - below)
                below = upto
                if below == len(ordered):
                    break
        total.inc(sum(values))

    def alert(self, tenant: str, quota: str, severity: str) -> None:
        self.quota_alerts.labels(self.tenant_label(tenant), quota, severity).inc()

    # -- exposition ---------------------------------------------------------
    def exposition(self) -> bytes:
        """The text format of every metric (of every worker in multiprocess mode)."""
        self.sample()
        if self.multiprocess_path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        registry.register(_WorkerFiles(self.multiprocess_path))
        return generate_latest(registry)

    def sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's current value in this process's registry (single-process mode; for tests and the admin API)."""
        return self.registry.get_sample_value(name, labels or {})


def standard_samplers(state: Any) -> list[Callable[[GatewayMetrics], None]]:
    """Readers of live state on :class:`GatewayState`, run at scrape time (and each flush): the breaker and the
    usability of every deployment of the config in force, and the requests in flight."""
    shown: set[str] = set()

    def deployments(metrics: GatewayMetrics) -> None:
        runtime = getattr(state, "runtime", None)
        if runtime is None:
            return
        seen: set[str] = set()
        for route in runtime.routes.values():
            for dstate in route.states:
                name = dstate.label
                if name in seen:  # a deployment serving several models: one state, one series
                    continue
                seen.add(name)
                metrics.breaker_state.labels(name).set(STATE_CODES[dstate.breaker.state])
                metrics.deployment_healthy.labels(name).set(1 if dstate.usable else 0)
        if metrics.multiprocess_path is None:  # the library cannot remove a series from the multiprocess files
            for name in shown - seen:
                metrics.breaker_state.remove(name)
                metrics.deployment_healthy.remove(name)
        shown.clear()
        shown.update(seen)

    def in_flight(metrics: GatewayMetrics) -> None:
        shedder = getattr(state, "shedder", None)
        if shedder is not None:
            metrics.in_flight.set(shedder.inflight)

    return [deployments, in_flight]
