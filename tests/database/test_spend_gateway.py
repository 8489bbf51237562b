"""Spend rows of real requests through an in-process gateway, on SQLite and on a real PostgreSQL.

Every answered request becomes one row with its columns (success, upstream error, refused by a limit, a stream cut
by its token budget, a client gone); a PostgreSQL stopped under load loses no request and no row.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp

from tollgate.database.spend import SPEND_COLUMNS, SpendFilter, select_spend
from tollgate.runtime.state import GatewayState

from ..resilience.helpers import gateway
from ..support.postgres import PostgresServer

KEY = "tg_spend_test_key_0123456789abcdefghij"
MSG = [{"role": "user", "content": "hello there"}]


def spend_doc(mock_url: str, database: dict[str, Any]) -> dict[str, Any]:
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "identity": {"chain": ["api_key"], "end_user": {"from": ["header"]}},
        "plans": {"open": {"monthly_requests": 10_000_000, "concurrency": 10_000}},
        "tenants": {
            "acme": {"plan": "open", "keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
        },
        "namespaces": {
            "cut": {"matchers": [{"type": "header", "field": "X-Scenario", "op": "equals", "value": "cut"}]},
            "burst": {"matchers": [{"type": "header", "field": "X-Scenario", "op": "equals", "value": "burst"}]},
        },
        "upstreams": {
            "openai": {"base_url": f"{mock_url}/v1", "forward_headers": ["x-mock-*"]},
            "openai-down": {"base_url": f"{mock_url}/v1", "headers": {"x-mock-status": "500"}},
        },
        "models": {
            "gpt-4o": {"deployments": [{"upstream": "openai", "model": "gpt-4o-2024-08-06"}]},
            "gpt-down": {"deployments": [{"upstream": "openai-down"}]},
        },
        "rules": {
            "cut-budget": {
                "type": "token_limit",
                "limit": 300,
                "per": "hour",
                "on_exceed": "cut",
                "scope": ["tenant"],
                "attach": {"namespaces": ["cut"]},
            },
            "burst": {
                "type": "request_limit",
                "limit": 1,
                "per": "minute",
                "scope": ["key"],
                "attach": {"namespaces": ["burst"]},
            },
        },
        "pricing": {"currency": "USD", "models": {"gpt-4o": {"input_per_1k": 2.5, "output_per_1k": 10.0}}},
        "admission": {"default_max_tokens": 50},
        "usage": {"flush_interval": "50ms"},
        "access_log": {"enabled": False},
        "database": database,
    }


async def rows_of(state: GatewayState, n: int, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The spend rows once ``n`` of them are in the database, by request id."""
    spend = state.accounting.spend_log
    assert spend is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await state.accounting.flush()
        rows = await select_spend(spend.database, SpendFilter(), limit=100_000)
        if len(rows) >= n or loop.time() > deadline:
            return {r[0]: dict(zip(SPEND_COLUMNS, r, strict=True)) for r in rows}
        await asyncio.sleep(0.05)


async def post(
    s: aiohttp.ClientSession, url: str, body: dict[str, Any], **headers: str
) -> tuple[int, str, bytes, dict[str, Any] | None]:
    async with s.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}", **headers}
    ) as r:
        raw = await r.read()
        parsed = await r.json() if r.content_type == "application/json" else None
        return r.status, r.headers["x-request-id"], raw, parsed


async def test_every_answered_request_is_one_spend_row_with_its_columns(database_url: str, mock_url: str) -> None:
    async with gateway(spend_doc(mock_url, {"url": database_url})) as (url, state), aiohttp.ClientSession() as s:
        ok_status, ok_id, _raw, ok_body = await post(
            s, url, {"model": "gpt-4o", "messages": MSG}, **{"x-tollgate-end-user": "alice"}
        )
        cut_status, cut_id, cut_raw, _ = await post(
            s,
            url,
            {"model": "gpt-4o", "messages": MSG, "stream": True},
            **{"X-Scenario": "cut", "x-mock-completion-tokens": "2000"},
        )
        first_status, first_id, _r, _b = await post(
            s, url, {"model": "gpt-4o", "messages": MSG}, **{"X-Scenario": "burst"}
        )
        refused_status, refused_id, _r, _b = await post(
            s, url, {"model": "gpt-4o", "messages": MSG}, **{"X-Scenario": "burst"}
        )
        down_status, down_id, _r, _b = await post(s, url, {"model": "gpt-down", "messages": MSG})
        gone_id = await _client_gone(s, url)
        rows = await rows_of(state, 6)
    assert (ok_status, cut_status, first_status, refused_status) == (200, 200, 200, 429)
    assert down_status >= 500 and b"token_budget_exceeded" in cut_raw
    assert set(rows) == {ok_id, cut_id, first_id, refused_id, down_id, gone_id}

    ok = rows[ok_id]
    assert ok_body is not None
    usage = ok_body["usage"]
    assert ok["tenant"] == "acme" and ok["key_id"] == "acme-1" and ok["end_user"] == "alice"
    assert ok["endpoint"] == "chat" and ok["model"] == "gpt-4o" and ok["upstream"] == "openai"
    assert ok["deployment_model"] == "gpt-4o-2024-08-06" and ok["provider"] == "openai"
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert ok["usage_reported"] == 1 and ok["status"] == 200 and ok["error"] is None
    assert ok["cost_nanos"] == usage["prompt_tokens"] * 2_500_000 + usage["completion_tokens"] * 10_000_000
    assert ok["currency"] == "USD" and ok["stream"] == 0 and ok["cut"] == 0 and ok["attempts"] == 1
    assert ok["total_ms"] > 0 and ok["ttfb_ms"] is not None and 0 < ok["ttfb_ms"] <= ok["total_ms"]
    assert abs(ok["ts_ms"] - rows[cut_id]["ts_ms"]) < 60_000

    cut = rows[cut_id]
    assert cut["stream"] == 1 and cut["cut"] == 1 and cut["error"] == "token_budget_exceeded"
    assert 0 < cut["completion_tokens"] <= 300 and cut["namespace"] == "cut"

    refused = rows[refused_id]
    assert refused["status"] == 429 and refused["upstream"] is None and refused["cost_nanos"] == 0
    assert refused["namespace"] == "burst" and refused["cut"] == 0

    assert rows[down_id]["status"] == down_status and rows[down_id]["error"] is not None
    assert rows[gone_id]["status"] == 499 and rows[gone_id]["stream"] == 1


async def _client_gone(s: aiohttp.ClientSession, url: str) -> str:
    """A stream whose client leaves after its first event; its request id."""
    body = {"model": "gpt-4o", "messages": MSG, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}", "x-mock-stall-after": "2"}
    async with s.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        request_id = r.headers["x-request-id"]
        await r.content.readline()
        r.connection.transport.abort()  # type: ignore[union-attr]
    return request_id


async def test_a_database_stopped_under_load_fails_no_request_and_loses_no_row(
    pg_server: PostgresServer, postgres_url: str, mock_url: str, tmp_path: Path
) -> None:
    spill = tmp_path / "spend.spill"
    database = {"url": postgres_url, "timeout": "2s", "buffer": {"memory_rows": 20, "spill_path": str(spill)}}
    statuses: list[int] = []
    ids: list[str] = []
    spilled = False
    async with gateway(spend_doc(mock_url, database)) as (url, state), aiohttp.ClientSession() as s:
        spend = state.accounting.spend_log
        assert spend is not None

        async def load(n: int) -> None:
            nonlocal spilled
            for _ in range(n):
                results = await asyncio.gather(*(post(s, url, {"model": "gpt-4o", "messages": MSG}) for _ in range(5)))
                statuses.extend(r[0] for r in results)
                ids.extend(r[1] for r in results)
                spilled = spilled or spend.spilled_bytes > 0

        await load(4)
        pg_server.stop()
        try:
            await load(40)  # 200 requests while the database is down
            assert not spend.available
        finally:
            pg_server.start()
        await load(4)
        rows = await rows_of(state, len(ids), timeout=60.0)
        written_while_up = spend.written
    assert statuses == [200] * len(ids), "no request failed while the database was down"
    assert spilled and spend.dropped == 0 and written_while_up >= len(ids)
    assert set(rows) == set(ids)  # every row present once (request_id is the key)
    assert not spill.exists()
