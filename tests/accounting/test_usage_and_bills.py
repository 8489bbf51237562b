"""Usage and bills through real processes: gateway, mock upstream, redis-server; read back through the admin API."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from ..support.processes import Proc
from ..support.redis import RedisServer
from .conftest import (
    ACME_KEY,
    GLOBEX_KEY,
    PRICES,
    Admin,
    accounting_doc,
    gateway,
    post_chat,
    stop_gracefully,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _stream_usage(raw: bytes) -> dict[str, int]:
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            event = orjson.loads(line[6:])
            if event.get("usage"):
                return dict(event["usage"])
    raise AssertionError("the stream carried no usage chunk")


async def _disconnect_mid_stream(session: aiohttp.ClientSession, proc: Proc) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "a long answer please"}]}
    headers = {
        "Authorization": f"Bearer {ACME_KEY}",
        "x-mock-tokens-per-second": "20",
        "x-mock-completion-tokens": "200",
    }
    async with session.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status == 200
        await r.content.readany()  # the first event arrived: the stream is flowing
        r.close()  # and the client goes away


async def _mixed_traffic(proc: Proc) -> dict[str, dict[str, int]]:
    """Send stream, non-stream, embedding, failed and disconnected requests; return the usage the mock reported by model."""
    reported: dict[str, dict[str, int]] = {}

    def add(model: str, usage: dict[str, int]) -> None:
        r = reported.setdefault(model, {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0})
        r["prompt_tokens"] += usage["prompt_tokens"]
        r["completion_tokens"] += usage.get("completion_tokens", 0)

    async with aiohttp.ClientSession() as s:
        for i, model in enumerate(("gpt-4o-mini", "gpt-4o", "gpt-4o-mini")):
            status, body = await post_chat(s, proc, ACME_KEY, model=model, content="x" * (10 * i + 3))
            assert status == 200, body
            add(model, body["usage"])
        for model in ("gpt-4o-mini", "gpt-4o"):
            status, raw = await post_chat(
                s, proc, ACME_KEY, model=model, stream=True, headers={"x-mock-completion-tokens": "7"}
            )
            assert status == 200
            add(model, _stream_usage(raw))
        for text in ("embed me", "and me too, please"):
            async with s.post(
                f"{proc.url}/v1/embeddings",
                json={"model": "text-embedding-3-small", "input": text},
                headers={"Authorization": f"Bearer {ACME_KEY}"},
            ) as r:
                assert r.status == 200
                add("text-embedding-3-small", (await r.json())["usage"])
        for _ in range(2):
            await _disconnect_mid_stream(s, proc)
        for _ in range(2):  # refused by the upstream (a 4xx does not count against the deployment's breaker)
            status, _body = await post_chat(s, proc, ACME_KEY, headers={"x-mock-status": "400"})
            assert status == 400
    return reported


@pytest.fixture(scope="module")
def usage_gateway(mock: Proc, redis: RedisServer) -> Iterator[Proc]:
    doc = accounting_doc(
        f"{mock.url}/v1", usage={"backend": "redis", "url": redis.url, "key_prefix": "t1", "flush_interval": "200ms"}
    )
    with gateway(doc) as proc:
        yield proc


async def _usage_when(admin: Admin, tenant: str, requests: int) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        usage = await admin.get(f"/admin/tenants/{tenant}/usage")
        return usage if usage["requests"] >= requests else None

    usage = await wait_until(ready, timeout=15)
    assert usage is not None, f"usage of {tenant} never reached {requests} requests"
    return usage


async def test_usage_after_stream_nonstream_failed_and_disconnected_requests_equals_the_mocks_reported_usage(
    usage_gateway: Proc,
) -> None:
    reported = await _mixed_traffic(usage_gateway)
    usage = await _usage_when(Admin(usage_gateway), "acme", 11)
    await asyncio.sleep(0.5)  # a late record would show up now
    usage = await Admin(usage_gateway).get("/admin/tenants/acme/usage")
    assert usage["requests"] == 11
    assert usage["errors"] == 4  # two upstream refusals, two clients gone (recorded as 499)
    real_prompt = usage["prompt_tokens"] - usage["estimated"]["prompt_tokens"]
    real_completion = usage["completion_tokens"] - usage["estimated"]["completion_tokens"]
    assert real_prompt == sum(r["prompt_tokens"] for r in reported.values())
    assert real_completion == sum(r["completion_tokens"] for r in reported.values())
    # Only the two disconnected streams may carry an estimate: every other request had its usage reported.
    assert usage["estimated"]["requests"] <= 2
    day = next(iter(usage["by_day"].values()))
    assert day["requests"] == 11 and len(usage["by_day"]) == 1


async def test_bills_match_the_price_table_by_model_and_in_the_csv_export(usage_gateway: Proc) -> None:
    admin = Admin(usage_gateway)
    async with aiohttp.ClientSession() as s:
        for model, content in (
            ("gpt-4o", "price me"),
            ("gpt-4o-mini", "and me"),
            ("gpt-4o", "once more with more words"),
        ):
            status, _ = await post_chat(s, usage_gateway, GLOBEX_KEY, model=model, content=content)
            assert status == 200
    usage = await _usage_when(admin, "globex", 3)
    assert usage["currency"] == "USD"
    total = 0.0
    for model, row in usage["by_model"].items():
        price = PRICES[model]
        expected = round(
            (row["prompt_tokens"] * price["input_per_1k"] + row["completion_tokens"] * price["output_per_1k"]) / 1000, 9
        )
        assert row["cost"] == pytest.approx(expected, abs=1e-9), model
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        total += expected
    assert usage["cost"] == pytest.approx(total, abs=1e-9)
    assert set(usage["by_model"]) == {"gpt-4o", "gpt-4o-mini"}

    text = await admin.get("/admin/tenants/globex/usage.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["model"] for r in rows} == {"gpt-4o", "gpt-4o-mini"}
    assert sum(float(r["cost"]) for r in rows) == pytest.approx(total, abs=1e-8)
    assert sum(int(r["requests"]) for r in rows) == 3
    everyone = list(csv.DictReader(io.StringIO(await admin.get("/admin/usage.csv"))))
    assert {r["tenant"] for r in everyone} >= {"acme", "globex"}


async def test_usage_period_must_be_a_month(usage_gateway: Proc) -> None:
    admin = Admin(usage_gateway)
    async with (
        aiohttp.ClientSession() as s,
        s.get(admin.base + "/admin/tenants/acme/usage", headers=admin.headers, params={"period": "2024-13"}) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_period"
    empty = await admin.get("/admin/tenants/acme/usage", period="2001-01")
    assert empty["requests"] == 0 and empty["by_day"] == {}


@pytest.mark.parametrize("backend", ["file", "redis"])
async def test_graceful_shutdown_flushes_pending_usage_so_the_count_survives_a_restart(
    mock: Proc, redis: RedisServer, tmp_path: Any, backend: str
) -> None:
    # A flush interval far longer than the test: only the shutdown flush can write these records.
    usage: dict[str, Any] = {"flush_interval": "10m", "batch_size": 100_000}
    if backend == "file":
        usage |= {"backend": "file", "path": str(tmp_path / "usage.json")}
    else:
        usage |= {"backend": "redis", "url": redis.url, "key_prefix": f"shutdown-{tmp_path.name}"}
    doc = accounting_doc(f"{mock.url}/v1", usage=usage)
    sent = 0
    with gateway(doc) as proc:
        async with aiohttp.ClientSession() as s:
            for i in range(25):
                status, _ = await post_chat(s, proc, ACME_KEY, stream=i % 2 == 0)
                assert status == 200
                sent += 1
        before = await Admin(proc).get("/admin/tenants/acme/usage")
        assert before["requests"] == 0  # nothing was flushed yet
        assert stop_gracefully(proc) == 0
    with gateway(doc) as proc:
        after = await Admin(proc).get("/admin/tenants/acme/usage")
    assert after["requests"] == sent
    assert after["prompt_tokens"] > 0
