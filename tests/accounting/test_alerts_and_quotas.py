"""Quota alerts through real gateway processes sharing one Redis: once per threshold per period, signed, never in a request's way."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from contextlib import ExitStack
from typing import Any

import aiohttp
import orjson
import pytest

from ..support.processes import Proc
from ..support.redis import RedisServer
from .conftest import (
    ACME_KEY,
    GLOBEX_KEY,
    WEBHOOK_SECRET,
    Admin,
    WebhookReceiver,
    accounting_doc,
    gateway,
    post_chat,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _verify(headers: dict[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["X-Tollgate-Signature"].split(","))
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"]) and abs(int(parts["t"]) - time.time()) < 60


def _doc(mock: Proc, redis: RedisServer, prefix: str, webhook: dict[str, Any]) -> dict[str, Any]:
    return accounting_doc(
        f"{mock.url}/v1",
        usage={"backend": "redis", "url": redis.url, "key_prefix": prefix, "flush_interval": "100ms"},
        alerts={"webhook": {"secret": WEBHOOK_SECRET, **webhook}},
        # The quota itself is enforced by the limiter: shared through the same Redis, under its own prefix.
        store={"backend": "redis", "url": redis.url, "key_prefix": f"tg-{prefix}"},
    )


async def test_alerts_fire_exactly_once_per_threshold_per_period_across_two_gateway_processes(
    mock: Proc, redis: RedisServer, webhook: WebhookReceiver
) -> None:
    doc = _doc(mock, redis, "alerts-two", {"url": webhook.url, "timeout": "2s"})
    with ExitStack() as stack:
        procs = [stack.enter_context(gateway(doc)) for _ in range(2)]
        async with aiohttp.ClientSession() as s:
            # globex's plan allows 20 requests a month; the two processes share the count through Redis.
            for i in range(20):
                status, body = await post_chat(s, procs[i % 2], GLOBEX_KEY)
                assert status == 200, body
                if i in (15, 17, 18):  # let a flush land right around each threshold
                    await asyncio.sleep(0.3)
            await asyncio.sleep(0.5)
            for i in range(4):  # past 100 %: refused by the quota, and nothing new to announce
                status, _ = await post_chat(s, procs[i % 2], GLOBEX_KEY)
                assert status == 429
        await wait_until(lambda: _at_least(webhook, 3), timeout=10)
        await asyncio.sleep(1.0)  # a duplicate would arrive by now

        payloads = [orjson.loads(body) for _headers, body in webhook.deliveries]
        assert sorted((p["threshold_percent"], p["severity"]) for p in payloads) == [
            (80.0, "warning"),
            (90.0, "high"),
            (95.0, "critical"),
        ]
        assert {(p["tenant"], p["quota"], p["event"]) for p in payloads} == {
            ("globex", "monthly_requests", "quota.threshold")
        }
        assert all(_verify(headers, body) for headers, body in webhook.deliveries)

        quota = await Admin(procs[0]).get("/admin/tenants/globex/quota")
        requests = next(q for q in quota["quotas"] if q["quota"] == "monthly_requests")
        assert requests["used"] == 20 and requests["limit"] == 20 and requests["percent"] == 100.0
        assert sorted(quota["alerts_fired"]) == ["monthly_requests:80", "monthly_requests:90", "monthly_requests:95"]
        audit = await Admin(procs[1]).get("/admin/tenants/globex/audit")
        assert len([e for e in audit["events"] if e["kind"] == "quota_alert"]) == 3


async def _at_least(webhook: WebhookReceiver, n: int) -> bool:
    return len(webhook.deliveries) >= n


async def test_a_failing_webhook_does_not_slow_requests(mock: Proc, redis: RedisServer) -> None:
    # The receiver answers 500 after 3 s: every delivery times out (1 s) and is retried with backoff.
    async with WebhookReceiver(delay=3.0, status=500) as hook:
        doc = _doc(mock, redis, "alerts-slow", {"url": hook.url, "timeout": "1s", "retries": 3, "backoff": "200ms"})
        with gateway(doc) as proc:
            async with aiohttp.ClientSession() as s:
                for _ in range(20):  # cross every threshold: three deliveries start failing
                    status, _ = await post_chat(s, proc, GLOBEX_KEY)
                    assert status == 200
                await wait_until(lambda: _at_least(hook, 1), timeout=5)
                assert hook.deliveries, "no delivery was attempted"
                timings = []
                for _ in range(30):  # while deliveries hang and retry (acme's plan has room; globex is spent)
                    t0 = time.perf_counter()
                    status, _ = await post_chat(s, proc, ACME_KEY)
                    timings.append(time.perf_counter() - t0)
                    assert status == 200
            assert max(timings) < 0.25, timings
            assert len(hook.deliveries) < 3 * 4  # deliveries were still hanging and retrying while we measured
