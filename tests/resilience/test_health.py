"""Active health probes: a deployment failing its probes leaves the rotation, and comes back when it answers."""

from __future__ import annotations

import sys

import aiohttp
import pytest

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
