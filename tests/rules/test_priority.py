"""A plan's priority class reaches the shedder: under pressure the top class keeps its reserved share."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp

from ..support.processes import Proc, gateway_config, gateway_process

LOW_KEY = "tg_priority_low_0123456789abcdefghijklmn"
HIGH_KEY = "tg_priority_high_0123456789abcdefghijklm"
MSG = [{"role": "user", "content": "hi"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def slow_stream(s: aiohttp.ClientSession, gw: Proc, key: str, headers: dict[str, str] | None = None) -> int:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MSG, "stream": True}
    hdrs = {
        "Authorization": f"Bearer {key}",
        "x-mock-tokens-per-second": "10",
        "x-mock-completion-tokens": "15",
        **(headers or {}),
    }
    async with s.post(f"{gw.url}/v1/chat/completions", json=body, headers=hdrs) as r:
        await r.read()
        return r.status


async def test_under_load_the_top_priority_plan_keeps_its_reserved_share(mock: Proc) -> None:
    config = gateway_config(
        f"{mock.url}/v1",
        identity={"chain": ["api_key"]},
        plans={"free": {"monthly_requests": 1000, "concurrency": 100, "max_header_priority": 0}},
        tenants={
            "small": {"plan": "free", "keys": [{"id": "small-1", "sha256": sha(LOW_KEY)}]},
            "big": {"plan": "enterprise", "keys": [{"id": "big-1", "sha256": sha(HIGH_KEY)}]},
        },
        resilience={"shedding": {"max_inflight": 10, "reserved_share": 0.4, "top_priority": 1}},
    )
    with gateway_process(config) as gw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            # The free plan may not raise itself: its header asks for more than max_header_priority allows.
            low = [asyncio.create_task(slow_stream(s, gw, LOW_KEY, {"X-Tollgate-Priority": "5"})) for _ in range(12)]
            await asyncio.sleep(0.4)
            high = await asyncio.gather(*(slow_stream(s, gw, HIGH_KEY) for _ in range(3)))
            low_statuses = await asyncio.gather(*low)
    assert low_statuses.count(200) <= 6  # (1 - 0.4) of 10 in flight at most
    assert low_statuses.count(503) >= 6
    assert high == [200, 200, 200]  # the enterprise plan (priority 1) still gets in
