"""Active health probes: a deployment failing its probes leaves the rotation, and comes back when it answers."""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ..support.processes import Proc, free_port, start_process
from .helpers import chat, config_doc, gateway

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_deployment_failing_probes_leaves_the_rotation_and_returns_once_it_answers(mock: Proc) -> None:
    port = free_port()  # nothing listens there yet
    later = {"base_url": f"http://127.0.0.1:{port}/v1", "timeouts": {"connect": "1s"}}
    models = {"m": {"deployments": [{"upstream": "later"}, {"upstream": "mock"}]}}
    health = {"enabled": True, "interval": "1h", "timeout": "1s", "unhealthy_after": 2, "healthy_after": 1}
    doc = config_doc(mock.url, models, {"health": health, "retries": {"max": 0}}, later=later)
    async with gateway(doc) as (url, state):
        flaky = next(s for s in state.deployments.states.values() if s.key.startswith("later/"))
        live = next(s for s in state.deployments.states.values() if s.key.startswith("mock/"))
        # The background prober ran a round at start; two more make unhealthy_after certain either way.
        await state.health.probe_all()
        await state.health.probe_all()
        assert not flaky.healthy and live.healthy
        async with aiohttp.ClientSession() as s:
            for _ in range(6):  # round robin would send every other request to the missing one
                assert (await chat(s, url, "m"))[0] == 200
        proc = start_process([sys.executable, "-m", "tollgate", "mock-upstream", "--port", str(port)], port)
        try:
            await state.health.probe_all()
            assert flaky.healthy
            async with aiohttp.ClientSession() as s:
                for _ in range(4):
                    await chat(s, url, "m")
            assert flaky.calls == 2  # back in the rotation
        finally:
            proc.stop()


async def test_each_provider_is_probed_at_its_own_list_of_models_with_its_own_credential(
    mock: Proc, aiohttp_server: Any
) -> None:
    asked: list[tuple[str, str, dict[str, str]]] = []

    async def models(request: web.Request) -> web.Response:
        asked.append((request.path, request.query_string, {k.lower(): v for k, v in request.headers.items()}))
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_get("/{tail:.*}", models)
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    upstreams = {
        "claude": {"provider": "anthropic", "base_url": base, "api_key": "sk-ant-probe-0123456789"},
        "azure-v1": {"provider": "azure", "base_url": base, "api_key": "azure-probe-0123456789"},
        "azure-dated": {"provider": "azure", "base_url": base, "api_key": "azure-probe-1", "api_version": "2024-10-21"},
    }
    models_doc = {name: {"deployments": [{"upstream": name}]} for name in upstreams}
    health = {"enabled": True, "interval": "1h", "timeout": "1s"}
    async with gateway(config_doc(mock.url, models_doc, {"health": health}, **upstreams)) as (_url, state):
        await state.health.probe_all()  # besides the round the prober runs at start
    by_path = {(path, query): headers for path, query, headers in asked}
    assert by_path[("/v1/models", "")]["x-api-key"] == "sk-ant-probe-0123456789"  # anthropic
    assert by_path[("/openai/v1/models", "")]["api-key"] == "azure-probe-0123456789"  # azure's v1 API
    assert by_path[("/openai/models", "api-version=2024-10-21")]["api-key"] == "azure-probe-1"
    assert len(by_path) == 3  # nothing else was asked
