"""Accounting of one process: :meth:`Accounting.record` on the hot path (enqueue only), everything else in a background flusher.

Each flush (every ``usage.flush_interval``, sooner once ``usage.batch_size``
records wait, and once more on graceful shutdown) turns the waiting records
into metrics, access-log lines, security events and one batch of aggregate
deltas written to the usage store in one round trip; then it checks quota
thresholds and fires the alerts it wins the claim for.

What a crash can lose: the records taken since the last flush (at most
``flush_interval`` seconds or ``batch_size`` records of traffic), plus the
deltas kept in memory while the usage store was unreachable (retried at every
flush; bounded by the number of distinct tenant-days, not by traffic). A
graceful stop (SIGTERM) loses nothing: in-flight requests finish, then the
final flush runs before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from tollgate.accounting.access_log import AccessLog
from tollgate.accounting.aggregates import Batch, month_of
from tollgate.accounting.alerts import Alert, QuotaWatch, WebhookSender, new_delivery_id, quota_status
from tollgate.accounting.audit import AuditLog, SecurityWatch
from tollgate.accounting.db_audit import DatabaseAuditStore
from tollgate.accounting.db_usage_store import DatabaseUsageStore
from tollgate.accounting.metrics import GatewayMetrics, configured_models, standard_samplers
from tollgate.accounting.pricing import Pricing
from tollgate.accounting.records import Record
from tollgate.accounting.sla import SlaTracker
from tollgate.accounting.spend_log import SpendLog, open_spend_log
from tollgate.accounting.tally import Tally
from tollgate.accounting.usage_store import FileUsageStore, MemoryUsageStore, RedisUsageStore, UsageStore
from tollgate.background import BackgroundTask
from tollgate.config.accounting import AccountingConfig
from tollgate.database import Database
from tollgate.errors import StoreError

__all__ = ["Accounting"]

log = logging.getLogger("tollgate.accounting")
alert_log = logging.getLogger("tollgate.alerts")
_YIELD_EVERY = 256  # records processed between yields to the event loop during a flush


def _config_reader(config: Any, state: Any) -> Callable[[], Any]:
    """What gives the config version in force: the state's, which follows reloads; without a state, ``config``.

    Apart from ``Accounting.__init__``, and a partial rather than a lambda: compiled, the lambdas of one function
    share the variables any of them reads, and one holding ``config`` would keep a replaced version alive."""
    if state is None:
        return lambda: config
    return partial(getattr, state, "config")


class Accounting:
    """Usage, cost, quotas and alerts, metrics, access and audit logs of one gateway process."""

    def __init__(
        self,
        config: Any,
        *,
        state: Any = None,
        wall: Callable[[], float] = time.time,
        database: Database | None = None,
    ) -> None:
        self._config_of = _config_reader(config, state)
        acc = _accounting_config(config)
        self.settings = acc
        self._wall = wall
        self._queue: deque[Record] = deque()
        self._max_pending = acc.usage.max_pending
        self._batch_size = acc.usage.batch_size
        self._wake: asyncio.Event | None = None
        self._flusher = BackgroundTask("accounting-flusher", self._run)
        self._flush_lock: asyncio.Lock | None = None
        self._carry: Batch | None = None
        self._store_failing = False
        self._access_log_failing = False
        self.access_lines_lost = 0  # access-log lines a failed write took with it (disk full, stdout closed)
        self.dropped = 0
        self._dropped_reported = 0
        self.records_flushed = 0
        self.metrics = GatewayMetrics(acc.metrics)
        if state is not None:
            for sampler in standard_samplers(state):
                self.metrics.add_sampler(sampler)
        self._pricing_cache: tuple[Any, Pricing] | None = None
        self._models_cache: tuple[Any, frozenset[str]] | None = None
        self.base_dir = _base_dir(config)
        self.redis: Any = None
        # The database of record (opened and closed by the process's state): usage and audit go there unless
        # their sections name another store.
        self.database: Database | None = database if database is not None else getattr(state, "database", None)
        self.store: UsageStore = self._open_store(config)
        self.audit = self._open_audit()
        self.security = SecurityWatch(acc.audit, self.audit)
        self.access_log = AccessLog(acc.access_log, base_dir=self.base_dir)
        self.quota_watch = QuotaWatch(acc.alerts, acc.quotas)
        self.webhook: WebhookSender | None = None
        if acc.alerts.webhook is not None:
            self.webhook = WebhookSender(
                acc.alerts.webhook, on_outcome=lambda o: self.metrics.webhook_deliveries.labels(o).inc()
            )
        self.sla = SlaTracker()
        self.principals: dict[str, Any] = {}
        self.month_totals: dict[str, tuple[str, dict[str, int]]] = {}
        # The per-request spend log (database.url): rows from each flush's entries, written by its own task.
        self.spend_log: SpendLog | None = open_spend_log(
            getattr(config, "database", None),
            database=self.database,
            base_dir=self.base_dir,
            metrics=self.metrics,
            clock=wall,
        )
        self.metrics.add_sampler(self._sample)

    # -- construction ---------------------------------------------------------
    def _open_store(self, config: Any) -> UsageStore:
        usage = self.settings.usage
        store_cfg = getattr(config, "store", None)
        backend = usage.backend
        url = usage.url or getattr(store_cfg, "url", None)
        if backend == "auto" and self.database is not None and usage.url is None and usage.path is None:
            return DatabaseUsageStore(self.database, clock=self._wall, max_end_users=usage.max_end_users)
        if backend == "auto":
            if getattr(store_cfg, "backend", "embedded") == "redis" or usage.url is not None:
                backend = "redis"
            else:
                backend = "file" if usage.path is not None else "memory"
        if backend == "redis":
            if url is None:
                raise ValueError("usage: the redis backend needs usage.url or store.url")
            cluster = bool(getattr(store_cfg, "cluster", False))
            self.redis = _redis_client(url, cluster)
            return RedisUsageStore(
                self.redis,
                usage.key_prefix,
                usage.daily_ttl,
                usage.monthly_ttl,
                transaction=not cluster,
                max_end_users=usage.max_end_users,
            )
        if backend == "file":
            assert usage.path is not None
            return FileUsageStore(
                self._resolve(usage.path),
                usage.daily_ttl,
                usage.monthly_ttl,
                clock=self._wall,
                max_end_users=usage.max_end_users,
            )
        return MemoryUsageStore(usage.daily_ttl, usage.monthly_ttl, clock=self._wall, max_end_users=usage.max_end_users)

    def _open_audit(self) -> AuditLog:
        cfg = self.settings.audit
        on_event = lambda kind: self.metrics.audit_events.labels(kind).inc()  # noqa: E731
        backend = cfg.backend
        if backend == "auto" and self.database is not None and cfg.path is None:
            store = DatabaseAuditStore(self.database)
            return AuditLog(cfg, database=store, clock=self._wall, on_event=on_event)
        if backend == "auto":
            backend = "redis" if self.redis is not None else ("file" if cfg.path is not None else "memory")
        if backend == "redis":
            if self.redis is None:
                raise ValueError("audit: the redis backend needs the usage store on redis")
            return AuditLog(cfg, redis=self.redis, clock=self._wall, on_event=on_event)
        if backend == "file" and cfg.path is not None:
            return AuditLog(cfg, path=self._resolve(cfg.path), clock=self._wall, on_event=on_event)
        return AuditLog(cfg, clock=self._wall, on_event=on_event)

    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p

    def pricing(self) -> Pricing:
        """The price table of the config version in force (compiled once per version)."""
        acc = _accounting_config(self._config_of())
        cached = self._pricing_cache
        if cached is None or cached[0] is not acc.pricing:
            cached = self._pricing_cache = (acc.pricing, Pricing(acc.pricing))
        return cached[1]

    def models(self) -> frozenset[str]:
        """The model names of the config version in force (the metrics' model labels; computed once per version)."""
        config = self._config_of()
        # Keyed on the version's models, not the config: a cache holding the config would keep a replaced version
        # (its tenant table and all) alive until the next flush.
        models = getattr(config, "models", None)
        cached = self._models_cache
        if cached is None or cached[0] is not models:
            cached = self._models_cache = (models, configured_models(config))
        return cached[1]

    @property
    def current(self) -> AccountingConfig:
        return _accounting_config(self._config_of())

    # -- the hot path -----------------------------------------------------------
    @property
    def wall(self) -> Callable[[], float]:
        """The wall clock a record's ``wall`` comes from (the usage store's, so a record lands on the right day)."""
        return self._wall

    def record(self, record: Record) -> None:
        """Queue one request's record (tollgate/accounting/records.py) for accounting: O(1), never waits."""
        queue = self._queue
        if len(queue) >= self._max_pending:
            self.dropped += 1
            return
        queue.append(record)
        if len(queue) >= self._batch_size and self._wake is not None:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def carried(self) -> int:
        """Aggregate deltas kept in memory because the usage store could not take them (written at the next flush)."""
        return self._carry.size() if self._carry is not None else 0

    # -- lifecycle --------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self.access_log.open()
        if self.webhook is not None:
            self.webhook.start()
        self._flusher.start()
        if self.spend_log is not None:
            await self.spend_log.start()
        log.info("accounting: usage in %s, audit in %s", self.store.description, self.audit.description)
        if isinstance(self.store, MemoryUsageStore):
            log.warning("accounting: no usage.path and no Redis store: usage aggregates are lost on restart")

    async def close(self) -> None:
        """Stop the flusher and flush what is left (graceful shutdown: the requests have finished by now).

        A flush under way is let finish before its task is cancelled: it holds records taken from the queue
        that nothing else would account for (cancelled while waiting for work, the task holds none).
        """
        if self._flush_lock is not None:
            async with self._flush_lock:
                await self._flusher.stop()
        else:
            await self._flusher.stop()
        try:
            await self.flush()
        except Exception:
            log.exception("accounting: final flush failed")
        if self._carry is not None:
            log.error(
                "accounting: the usage store is unreachable; %d unwritten aggregate deltas are lost", self._carry.size()
            )
        if self.spend_log is not None:
            await self.spend_log.close()
        if self.webhook is not None:
            await self.webhook.close()
        self.access_log.close()
        await self.store.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def _run(self) -> None:
        assert self._wake is not None
        interval = self.settings.usage.flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("accounting: flush failed")

    # -- the flush ---------------------------------------------------------------
    async def flush(self) -> int:
        """Process every waiting record; returns how many."""
        lock = self._flush_lock or asyncio.Lock()
        async with lock:
            records, self._queue = self._queue, deque()
            acc = self.current
            pricing = self.pricing()
            currency = pricing.currency
            metrics, access, security, sla = self.metrics, self.access_log, self.security, self.sla
            spend = self.spend_log
            log_wanted = access.wants_status if access.config.enabled else None
            tally = Tally(
                pricing,
                log_wanted,
                security.STATUSES,
                keep_fields=spend is not None,
                log_all=access.takes_every_line,
            )
            pending = iter(records)
            while True:  # yield to the event loop between slices of records
                tally.fold(islice(pending, _YIELD_EVERY))
                if tally.records == len(records):
                    break
                await asyncio.sleep(0)
            if spend is not None and tally.fields:
                spend.add(tally.fields, currency)
            metrics.apply(tally, currency, self.models())
            if metrics.multiprocess_path is not None:  # another worker may answer the scrape: keep the gauges current
                metrics.sample()
            sla.observe_tally(tally, acc.metrics)
            batch = Batch()
            batch.add_tally(tally)
            for e in tally.watched_entries:
                security.observe(e)
            self.principals.update(tally.principals)
            if self.dropped != self._dropped_reported:
                metrics.accounting_dropped.inc(self.dropped - self._dropped_reported)
                log.error("accounting: %d records dropped (pending queue full)", self.dropped - self._dropped_reported)
                self._dropped_reported = self.dropped
            # The usage aggregates (what bills are made of) first: a failing access log never holds them back.
            await self._write(batch)
            await self._write_access_log(tally.logged, currency)
            await self._flush_audit()
            self.records_flushed += len(records)
            return len(records)

    async def _write_access_log(self, lines: Sequence[Any], currency: str) -> None:
        """Append the flush's access-log lines; a file that cannot take them (disk full, a closed stdout) loses
        those lines, counted and said once until it works again, and stops nothing else of the flush."""
        try:
            await self.access_log.write(lines, currency)
        except OSError as exc:
            self.access_lines_lost += len(lines)
            if not self._access_log_failing:
                log.error("accounting: the access log cannot be written, its lines are lost until it can: %s", exc)
            self._access_log_failing = True
            return
        if self._access_log_failing and lines:
            log.info("accounting: the access log is writable again (%d lines lost)", self.access_lines_lost)
            self._access_log_failing = False

    async def _write(self, batch: Batch) -> None:
        if self._carry is not None:
            batch.merge(self._carry)
            self._carry = None
        if not batch:
            return
        try:
            totals = await self.store.apply(batch)
        except StoreError as exc:
            self._carry = batch
            self.metrics.accounting_flushes.labels("failed").inc()
            if not self._store_failing:
                log.error("accounting: usage store write failed, keeping the deltas for the next flush: %s", exc)
            self._store_failing = True
            return
        if self._store_failing:
            log.info("accounting: usage store writable again")
        self._store_failing = False
        self.metrics.accounting_flushes.labels("ok").inc()
        for (tenant, month), fields in totals.items():
            self.month_totals[tenant] = (month, fields)
        await self._check_quotas(totals)

    async def _check_quotas(self, totals: dict[tuple[str, str], dict[str, int]]) -> None:
        candidates = self.quota_watch.candidates(totals, self.principals)
        if not candidates:
            return
        try:
            won = await self.store.claim([(a.tenant, a.period, a.name) for a in candidates])
        except StoreError as exc:
            log.error("accounting: cannot claim quota alerts (retried at the next crossing check): %s", exc)
            return
        self.quota_watch.known(candidates)
        for alert, mine in zip(candidates, won):
            if mine:
                self._fire(alert)

    def _fire(self, alert: Alert) -> None:
        payload = {**alert.to_json(), "delivery": new_delivery_id(), "ts": self._wall()}
        log_fn = alert_log.error if alert.severity == "critical" else alert_log.warning
        log_fn("quota alert %s", orjson.dumps(payload).decode(), extra={"event": payload})
        self.metrics.alert(alert.tenant, alert.quota, alert.severity)
        self.audit.record("quota_alert", actor="gateway", tenant=alert.tenant, target=alert.quota, detail=payload)
        if self.webhook is not None:
            self.webhook.enqueue(payload)

    async def _flush_audit(self) -> None:
        try:
            await self.audit.flush()
        except StoreError as exc:
            log.error("accounting: %s (kept for the next flush)", exc)

    # -- reading ------------------------------------------------------------------
    def _sample(self, metrics: GatewayMetrics) -> None:
        metrics.set_queue_depth("accounting", len(self._queue))
        if self.spend_log is not None:
            metrics.set_queue_depth("spend_log", self.spend_log.pending)
        if self.webhook is not None:
            metrics.set_queue_depth("alert_webhook", self.webhook.pending)

    def principal_of(self, tenant: str, state: Any = None) -> Any:
        """The tenant's principal (plan and limits): from the identity directory when there is one, else the last seen."""
        registry = getattr(state, "registry", None)
        directory = getattr(registry, "directory", None)
        entry = getattr(directory, "tenants", {}).get(tenant) if directory is not None else None
        if entry is not None and getattr(entry, "principal", None) is not None:
            return entry.principal
        return self.principals.get(tenant)

    async def quota(self, tenant: str, state: Any = None) -> dict[str, Any]:
        month = month_of(self._wall())
        fields, _days = await self.store.read(tenant, month)
        principal = self.principal_of(tenant, state)
        statuses = quota_status(tenant, principal, fields, self.current.quotas)
        fired = await self.store.fired(tenant, month)
        return {
            "tenant": tenant,
            "period": month,
            "plan": getattr(principal, "plan", None),
            "quotas": [s.to_json() for s in statuses],
            "alerts_fired": fired,
        }

    def spend_exhausted(self, tenant: str, plan: str | None) -> bool:
        """True when the tenant's spend this month (as of the last flush) reached its quota: for the admit stage, O(1)."""
        known = self.month_totals.get(tenant)
        limit = self.current.quotas.spend_limit(tenant, plan)
        if known is None or not limit or known[0] != month_of(self._wall()):
            return False
        return known[1].get("cost_n", 0) >= limit * 1_000_000_000


def _accounting_config(config: Any) -> AccountingConfig:
    return getattr(config, "accounting", None) or AccountingConfig()


def _base_dir(config: Any) -> Path | None:
    data_dir = getattr(config, "data_dir", None)
    return None if data_dir is None else Path(data_dir)


def _redis_client(url: str, cluster: bool) -> Any:
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    from redis.asyncio import Redis

    return Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
