"""Quota alerts: thresholds crossed per tenant per month, fired once each, and their signed webhook deliveries.

A webhook delivery is a JSON POST with these headers::

    X-Tollgate-Event: quota.threshold
    X-Tollgate-Delivery: <unique id, the same on every retry>
    X-Tollgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Deliveries run in a background task behind a bounded queue: a slow or dead
receiver costs retries there, never time on a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tollgate.accounting.pricing import NANOS
from tollgate.background import BackgroundTask
from tollgate.config.accounting import AlertsConfig, QuotasConfig, WebhookConfig

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Alert", "QuotaStatus", "QuotaWatch", "WebhookSender", "quota_status", "sign"]

log = logging.getLogger("tollgate.alerts")


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    quota: str  # monthly_requests | monthly_tokens | monthly_spend
    used: float
    limit: float

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.limit if self.limit > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"quota": self.quota, "used": self.used, "limit": self.limit, "percent": round(self.percent, 2)}


@dataclass(frozen=True, slots=True)
class Alert:
    tenant: str
    period: str
    quota: str
    percent: float  # the threshold crossed
    severity: str
    used: float
    limit: float

    @property
    def name(self) -> str:
        return f"{self.quota}:{self.percent:g}"

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "quota.threshold",
            "tenant": self.tenant,
            "period": self.period,
            "quota": self.quota,
            "threshold_percent": self.percent,
            "severity": self.severity,
            "used": self.used,
            "limit": self.limit,
        }


def quota_status(tenant: str, principal: Any, totals: Mapping[str, int], quotas: QuotasConfig) -> list[QuotaStatus]:
    """Used and limit of every quota the tenant has (requests and tokens from the plan's limits, spend from ``quotas:``)."""
    out: list[QuotaStatus] = []
    limits = getattr(principal, "limits", None)
    requests_limit = getattr(limits, "monthly_requests", None)
    tokens_limit = getattr(limits, "monthly_tokens", None)
    if requests_limit:
        out.append(QuotaStatus("monthly_requests", totals.get("requests", 0), requests_limit))
    if tokens_limit:
        out.append(
            QuotaStatus(
                "monthly_tokens", totals.get("prompt_tokens", 0) + totals.get("completion_tokens", 0), tokens_limit
            )
        )
    spend_limit = quotas.spend_limit(tenant, getattr(principal, "plan", None))
    if spend_limit:
        out.append(QuotaStatus("monthly_spend", round(totals.get("cost_n", 0) / NANOS, 9), spend_limit))
    return out


class QuotaWatch:
    """Finds the thresholds a batch pushed tenants past; the caller claims them in the store before firing."""

    def __init__(self, alerts: AlertsConfig, quotas: QuotasConfig) -> None:
        self.alerts = alerts
        self.quotas = quotas
        # Alerts this process knows are claimed (by it or another): no store round trip to ask again.
        self._known: set[tuple[str, str, str]] = set()

    def candidates(
        self, totals: Mapping[tuple[str, str], Mapping[str, int]], principals: Mapping[str, Any]
    ) -> list[Alert]:
        if not self.alerts.enabled:
            return []
        out = []
        for (tenant, month), fields in totals.items():
            for status in quota_status(tenant, principals.get(tenant), fields, self.quotas):
                for t in self.alerts.thresholds:
                    if status.percent < t.percent:
                        break
                    alert = Alert(tenant, month, status.quota, t.percent, t.severity, status.used, status.limit)
                    if (tenant, month, alert.name) not in self._known:
                        out.append(alert)
        return out

    def known(self, alerts: Sequence[Alert]) -> None:
        for a in alerts:
            self._known.add((a.tenant, a.period, a.name))
        if len(self._known) > 1_000_000:  # a new month starts: forget the old claims
            self._known.clear()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookSender:
    """Posts alert payloads to the configured URL with a timeout and retries with exponential backoff."""

    def __init__(self, config: WebhookConfig, on_outcome: Any = None) -> None:
        self.config = config
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=config.max_queue)
        self._session: aiohttp.ClientSession | None = None
        self._sender = BackgroundTask("alert-webhook", self._run)
        self._on_outcome = on_outcome or (lambda outcome: None)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        import aiohttp  # here, not at the top: a gateway without a webhook never loads it

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout), trust_env=False)
        self._sender.start()

    def enqueue(self, payload: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait(payload)
            return True
        except asyncio.QueueFull:
            log.error("alert webhook queue is full; dropping alert %s", payload.get("delivery"))
            self._on_outcome("dropped")
            return False

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self._deliver(payload)
            finally:
                self._queue.task_done()

    async def _deliver(self, payload: dict[str, Any]) -> None:
        import aiohttp

        assert self._session is not None
        cfg = self.config
        body = orjson.dumps(payload)
        delay = cfg.backoff
        for attempt in range(cfg.retries + 1):
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-Tollgate-Event": str(payload.get("event", "quota.threshold")),
                "X-Tollgate-Delivery": str(payload.get("delivery", "")),
            }
            if cfg.secret:
                headers["X-Tollgate-Signature"] = sign(cfg.secret, ts, body)
            try:
                async with self._session.post(cfg.url, data=body, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self._on_outcome("delivered")
                        return
                    problem = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = type(exc).__name__
            if attempt < cfg.retries:
                self._on_outcome("retried")
                await asyncio.sleep(delay)
                delay *= 2
        log.error("alert webhook %s gave up after %d attempts: %s", payload.get("delivery"), cfg.retries + 1, problem)
        self._on_outcome("failed")

    async def close(self, grace: float = 2.0) -> None:
        """Give queued deliveries up to ``grace`` seconds, then stop."""
        if self._sender.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), grace)
            await self._sender.stop()
        if self._session is not None:
            await self._session.close()


def new_delivery_id() -> str:
    return "alert_" + os.urandom(8).hex()
