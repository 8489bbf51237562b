"""Queueing at a deployment's max_concurrency and gateway-wide shedding, end to end against the mock upstream process."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from ..support.processes import Proc, gateway_process
from .helpers import chat, config_doc, gateway

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
SLOW = {"x-mock-latency-ms": "200"}


def _limited(queue: bool, **model: object) -> dict[str, object]:
    return {"deployments": [{"upstream": "mock", "max_concurrency": 1}], "queue": queue, **model}


async def test_requests_over_max_concurrency_wait_their_turn_when_the_model_allows_it(mock: Proc) -> None:
    doc = config_doc(mock.url, {"m": _limited(True)}, {"queue": {"deadline": "5s"}})
    async with gateway(doc) as (url, state), aiohttp.ClientSession() as s:
        began = time.monotonic()
        results = await asyncio.gather(*(chat(s, url, "m", SLOW) for _ in range(5)))
        elapsed = time.monotonic() - began
        assert [r[0] for r in results] == [200] * 5
        assert elapsed >= 5 * 0.2 * 0.95  # one at a time
        [dstate] = state.deployments.states.values()
        assert dstate.queue is not None and dstate.queue.served_after_wait == 4 and dstate.queue.in_use == 0


async def test_queue_deadline_answers_with_a_clear_503(mock: Proc) -> None:
    doc = config_doc(mock.url, {"m": _limited(True)}, {"queue": {"deadline": "300ms", "status": 503}})
    async with gateway(doc) as (url, state), aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(chat(s, url, "m", {"x-mock-latency-ms": "1000"}) for _ in range(3)))
        statuses = sorted(r[0] for r in results)
        assert statuses == [200, 503, 503]
        refused = [orjson.loads(r[2])["error"] for r in results if r[0] == 503]
        assert all(e["code"] == "queue_timeout" and "concurrency limit" in e["message"] for e in refused)
        assert state.counters.queue_refused == 2


async def test_without_queueing_a_request_over_max_concurrency_goes_to_the_fallback(mock: Proc) -> None:
    models = {"m": _limited(False, fallbacks=["backup"]), "backup": {"deployments": [{"upstream": "healthy"}]}}
    async with gateway(config_doc(mock.url, models)) as (url, _state), aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(chat(s, url, "m", SLOW) for _ in range(2)))
        assert sorted(r[1]["x-tollgate-model"] for r in results) == ["backup", "m"]


async def test_overloaded_gateway_sheds_with_503_retry_after_and_keeps_the_reserved_share(mock: Proc) -> None:
    doc = config_doc(
        mock.url,
        {"m": {"deployments": [{"upstream": "mock"}]}},
        {"shedding": {"max_inflight": 5, "reserved_share": 0.2, "retry_after": "2s"}},
    )
    with gateway_process(doc) as gw:
        async with aiohttp.ClientSession() as s:
            results = await asyncio.gather(*(chat(s, gw.url, "m", {"x-mock-latency-ms": "500"}) for _ in range(20)))
    statuses = [r[0] for r in results]
    # Default priority 0 may use 80 % of 5 in-flight slots; the fifth stays reserved for the top priority.
    assert statuses.count(200) == 4 and statuses.count(503) == 16
    shed = [r for r in results if r[0] == 503]
    assert all(r[1]["Retry-After"] == "2" and b"gateway_overloaded" in r[2] for r in shed)
