"""on_limit: delay (a leaky bucket as a queue) through real gateway processes sharing a real redis-server: requests
sent at once to a shaped limit are answered at exactly its rate, in the order of their turns, across processes; past
max_delay they get 429 with Retry-After. A CPU hog runs beside the gateways throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from itertools import pairwise
from typing import Any

import aiohttp
import pytest

from tests.support.load import cpu_hog
from tests.support.processes import Proc, gateway_config, gateway_process, mock_upstream_process
from tests.support.redis import RedisServer

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.serial]  # turn times measured in wall-clock

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def shaped_config(upstream: str, redis_url: str, *, per_second: int, max_delay: str) -> dict[str, Any]:
    rule = {
        "type": "request_limit",
        "limit": per_second,
        "per": "second",
        "on_limit": "delay",
        "max_delay": max_delay,
        "scope": ["global"],
        "attach": {"global": True},
    }
    return gateway_config(upstream, store={"backend": "redis", "url": redis_url}, rules={"shaped": rule})


@contextmanager
def two_gateways(config: dict[str, Any]) -> Iterator[list[Proc]]:
    with ExitStack() as stack:
        yield [stack.enter_context(gateway_process(config)) for _ in range(2)]


async def send_at_once(gateways: list[Proc], n: int) -> tuple[float, list[tuple[int, float, int, dict[str, str]]]]:
    """``n`` chat requests started together, alternating between the gateways: (start, [(status, answered at,
    shaped ms, headers)])."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:

        async def one(i: int) -> tuple[int, float, int, dict[str, str]]:
            async with s.post(f"{gateways[i % len(gateways)].url}/v1/chat/completions", json=CHAT) as r:
                await r.read()
                return r.status, time.monotonic(), int(r.headers.get("x-tollgate-shaped-ms", "0")), dict(r.headers)

        start = time.monotonic()
        return start, list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_100_requests_at_once_to_10_per_second_are_answered_over_10_s_in_turn_order_across_2_processes(
    redis_standalone: RedisServer,
) -> None:
    redis_standalone.flushall()
    with mock_upstream_process() as mock, cpu_hog(1, seconds=60):
        config = shaped_config(f"{mock.url}/v1", redis_standalone.url, per_second=10, max_delay="15s")
        with two_gateways(config) as gateways:
            start, answers = await send_at_once(gateways, 100)
    assert [status for status, *_ in answers] == [200] * 100
    span = max(at for _, at, _, _ in answers) - start
    assert 9.0 <= span <= 11.0, span  # 99 intervals of 100 ms after the first, +- 10 %
    answered = sorted(at for _, at, _, _ in answers)
    too_fast = [i for i in range(90) if answered[i + 10] - answered[i] < 0.9]
    assert not too_fast, too_fast  # never more than 10 in a second, though two processes serve them
    shaped = sorted(ms for _, _, ms, _ in answers)
    assert shaped[0] <= 150 and shaped[-1] >= 9_000, shaped  # the last waited its turn, 99 intervals on


async def test_requests_leave_in_the_order_they_came_one_interval_apart(redis_standalone: RedisServer) -> None:
    """Sent 20 ms apart, faster than the 100 ms rate and alternating between two warm processes: each is answered
    after the one sent before it (first come, first served: the order the store saw them), one interval later."""
    redis_standalone.flushall()
    with mock_upstream_process() as mock, cpu_hog(1, seconds=60):
        config = shaped_config(f"{mock.url}/v1", redis_standalone.url, per_second=10, max_delay="15s")
        with two_gateways(config) as gateways:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
                for gateway in gateways:  # warm: a process's first request also opens its store connections
                    async with s.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as r:
                        assert r.status == 200
                await asyncio.sleep(0.3)  # their turns are past: the queue is empty again

                async def one(i: int) -> float:
                    await asyncio.sleep(0.02 * i)
                    async with s.post(f"{gateways[i % 2].url}/v1/chat/completions", json=CHAT) as r:
                        await r.read()
                        assert r.status == 200
                        return time.monotonic()

                answered = await asyncio.gather(*(one(i) for i in range(30)))
    gaps = [b - a for a, b in pairwise(answered)]
    assert all(gap > 0.03 for gap in gaps), gaps  # in the order sent: nobody overtakes the one before
    assert 0.08 <= sorted(gaps)[len(gaps) // 2] <= 0.12, gaps  # one interval apart


async def test_past_max_delay_the_rest_are_refused_with_429_and_retry_after(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    with mock_upstream_process() as mock:
        config = shaped_config(f"{mock.url}/v1", redis_standalone.url, per_second=10, max_delay="1s")
        with two_gateways(config) as gateways:
            _start, answers = await send_at_once(gateways, 30)
    admitted = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    assert len(admitted) + len(refused) == 30
    assert 10 <= len(admitted) <= 12  # turns 0, 100, ..., 1000 ms (a turn or so may free while they arrive)
    for _, _, _, headers in refused:
        assert int(headers["retry-after-ms"]) >= 1 and int(headers["Retry-After"]) >= 1
    assert max(ms for _, _, ms, _ in admitted) <= 1000
