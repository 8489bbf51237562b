"""Active health probes: a periodic GET per deployment; an unhealthy deployment leaves the rotation until it answers again.

Passive health (errors and timeouts of real traffic) is the breaker's job; the
probes catch a deployment that is down while nobody sends it traffic, and bring
it back only once it answers. A probe counts as a success when the upstream
answers with a status below 500 other than 429 within ``timeout``. A probe asks
the configured ``path``, or the upstream's provider's list of models
(tollgate/upstream/pool.py ``probe_path``), with the upstream's own credential.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from tollgate.background import BackgroundTask
from tollgate.config.model import Config
from tollgate.routing.balancing import DeploymentRegistry, DeploymentState
from tollgate.routing.models import ModelRoute
from tollgate.upstream.client import HttpError
from tollgate.upstream.pool import UpstreamPool

__all__ = ["HealthProber", "ProbedGateway"]


class _Routes(Protocol):
    @property
    def routes(self) -> Mapping[str, ModelRoute]: ...


class ProbedGateway(Protocol):
    """What the prober reads of the gateway each round: the config and routes in force, the deployments' live
    states, the upstream clients (``GatewayState`` is one)."""

    @property
    def config(self) -> Config: ...

    @property
    def runtime(self) -> _Routes: ...

    @property
    def deployments(self) -> DeploymentRegistry: ...

    @property
    def pool(self) -> UpstreamPool: ...


log = logging.getLogger("tollgate.health")


class HealthProber:
    """Runs in the background while ``resilience.health.enabled``; reads the live config each round."""

    def __init__(self, state: ProbedGateway) -> None:
        self.state = state
        self._prober = BackgroundTask("tollgate-health-probes", self._run)
        self._streaks: dict[str, int] = {}  # key -> +n successes / -n failures in a row
        self.probes = 0
        self.failures = 0

    def start(self) -> None:
        self._prober.start()

    async def close(self) -> None:
        await self._prober.stop()

    async def _run(self) -> None:
        while True:
            policy = self.state.config.resilience.health
            if not policy.enabled:
                for dstate in self.state.deployments.states.values():
                    dstate.healthy = True
                self._streaks.clear()
                await asyncio.sleep(1.0)
                continue
            await self.probe_all()
            await asyncio.sleep(policy.interval)

    async def probe_all(self) -> None:
        """One round: every deployment of the current config, concurrently."""
        targets: dict[str, tuple[DeploymentState, str]] = {}
        for route in self.state.runtime.routes.values():
            for deployment, dstate in zip(route.deployments, route.states):
                targets[dstate.key] = (dstate, deployment.upstream)
        await asyncio.gather(*(self._probe(dstate, upstream) for dstate, upstream in targets.values()))

    async def _probe(self, dstate: DeploymentState, upstream: str) -> None:
        policy = self.state.config.resilience.health
        client = self.state.pool.clients.get(upstream)
        if client is None or client.http is None:
            return
        self.probes += 1
        ok = False
        resp = None
        try:
            async with asyncio.timeout(policy.timeout):
                resp = await client.http.request(
                    "GET", policy.path or client.probe_path, [h for h in client.fixed_headers if h[0] != "Content-Type"]
                )
                await resp.read()
                ok = resp.status < 500 and resp.status != 429
        except (TimeoutError, HttpError):
            ok = False
        finally:
            if resp is not None:
                resp.release()
        if not ok:
            self.failures += 1
        streak = self._streaks.get(dstate.key, 0)
        streak = (streak + 1 if streak > 0 else 1) if ok else (streak - 1 if streak < 0 else -1)
        self._streaks[dstate.key] = streak
        if dstate.healthy and streak <= -policy.unhealthy_after:
            dstate.healthy = False
            log.warning("deployment %s failed %d health probe(s): out of rotation", dstate.key, -streak)
        elif not dstate.healthy and streak >= policy.healthy_after:
            dstate.healthy = True
            log.info("deployment %s passed %d health probe(s): back in rotation", dstate.key, streak)
