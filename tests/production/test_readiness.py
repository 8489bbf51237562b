"""/readyz says for each model whether a deployment can serve it: degraded while some cannot, 503 only when none can."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web

from tollgate.clock import ManualClock

from ..resilience.helpers import chat, config_doc, gateway
from ..support.processes import free_port


async def _models(_request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


async def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/readyz") as r:
        return r.status, await r.json()


async def _until(url: str, status: int, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = await _readyz(url)
        if got[0] == status or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_an_open_breaker_makes_its_model_degraded_until_its_cool_down_is_over(mock_url: str) -> None:
    doc = config_doc(
        mock_url,
        {
            "gpt-4o-mini": {"deployments": [{"upstream": "healthy"}]},
            "flaky": {"deployments": [{"upstream": "dead", "model": "gpt-4o-mini"}]},
        },
        resilience={"breaker": {"consecutive_failures": 1, "cool_down": "60s"}, "retries": {"max": 0}},
    )
    clock = ManualClock()
    async with gateway(doc, clock) as (url, _state):
        status, body = await _readyz(url)
        assert (status, body["status"], body["models"]) == (200, "ready", {"gpt-4o-mini": True, "flaky": True})
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, url, "flaky"))[0] in (502, 503)  # the dead upstream refuses: the breaker opens
        status, body = await _readyz(url)
        assert (status, body["status"]) == (200, "degraded"), body
        assert body["models"] == {"gpt-4o-mini": True, "flaky": False}
        assert body["degraded"] == ["model 'flaky' has no usable deployment"]
        # Once the cool-down is over the next request probes the deployment: counted usable, so that a gateway
        # taken out of rotation for its open breakers is not kept out for good by them.
        clock.advance(61)
        status, body = await _readyz(url)
        assert (status, body["status"], body["models"]) == (200, "ready", {"gpt-4o-mini": True, "flaky": True})


async def test_503_only_when_no_model_can_be_served_and_ready_again_once_the_probes_pass(mock_url: str) -> None:
    doc = config_doc(
        mock_url,
        {
            "gpt-4o-mini": {"deployments": [{"upstream": "dead"}]},
            "flaky": {"deployments": [{"upstream": "dead", "model": "other-model"}]},
        },
        resilience={
            "health": {"enabled": True, "interval": "100ms", "timeout": "500ms", "unhealthy_after": 1},
            "breaker": {"enabled": False},
        },
    )
    # Down now and brought up below: a port of its own (the helpers' down upstream shares one held bound for the run).
    dead_port = free_port()
    doc["upstreams"]["dead"]["base_url"] = f"http://127.0.0.1:{dead_port}/v1"
    async with gateway(doc) as (url, _state):
        status, body = await _until(url, 503)
        assert (status, body["status"]) == (503, "not ready"), body
        assert body["models"] == {"gpt-4o-mini": False, "flaky": False}
        assert any(p.startswith("no model can be served") for p in body["problems"]), body
        # The upstream comes up on its port and answers the probes: both models are served again.
        app = web.Application()
        app.router.add_get("/v1/models", _models)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", dead_port).start()
        try:
            status, body = await _until(url, 200)
            assert (status, body["status"], body["models"]) == (200, "ready", {"gpt-4o-mini": True, "flaky": True})
        finally:
            await runner.cleanup()
