"""The scaler of one process: samples and publishes every interval; while it holds the lease, decides every pool,
checks the quota before a scale-up, records the decision and acts on it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tollgate.accounting.audit import AuditLog
from tollgate.background import BackgroundTask
from tollgate.clock import Clock
from tollgate.config.scaling import ScalingConfig, ScalingPool
from tollgate.errors import ScalingActionFailed, StoreError
from tollgate.routing.balancing import DeploymentState
from tollgate.scaling.actuators import Actuator, build_actuator
from tollgate.scaling.board import SignalBoard
from tollgate.scaling.decision import Decision, decide
from tollgate.scaling.history import HistoryStore
from tollgate.scaling.lease import Lease
from tollgate.scaling.metrics import ScalingMetrics
from tollgate.scaling.quota import QuotaSource
from tollgate.scaling.signals import PoolMeter, aggregate

__all__ = ["SCALE_BLOCKED_EVENT", "Autoscaler", "PoolStatus", "process_id"]

log = logging.getLogger("tollgate.scaling")

SCALE_BLOCKED_EVENT = "scaling_blocked"
"""The audit event of a scale-up stopped by a quota."""

PoolStates = Callable[[ScalingPool], Sequence[DeploymentState]]


def process_id() -> str:
    """This process among the fleet's: host, pid and a random part (a restarted pid is another process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class PoolStatus:
    """What the leader knows of one pool."""

    replicas: int
    desired: int
    last_up: float | None = None
    last_down: float | None = None
    last_decision: dict[str, Any] | None = None
    last_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "desired": self.desired,
            "last_up": self.last_up,
            "last_down": self.last_down,
        }


class Autoscaler:
    """Runs every ``scaling.interval``: :meth:`tick` (the tests call it directly with a manual clock)."""

    def __init__(
        self,
        config: Callable[[], ScalingConfig],
        *,
        states: PoolStates,
        board: SignalBoard,
        lease: Lease,
        quotas: QuotaSource,
        history: HistoryStore,
        audit: AuditLog | None,
        metrics: ScalingMetrics,
        clock: Clock,
        actuators: Callable[[ScalingPool], Actuator] | None = None,
    ) -> None:
        self._config = config
        self._states = states
        self.board = board
        self.lease = lease
        self.quotas = quotas
        self.history = history
        self._audit = audit
        self.metrics = metrics
        self.clock = clock
        self._make_actuator = actuators or (lambda pool: build_actuator(pool.actuator, clock))
        self._actuators: dict[str, tuple[Any, Actuator]] = {}
        self._meters: dict[str, PoolMeter] = {}
        self.pools: dict[str, PoolStatus] = {}
        self.leader = False
        self.decide_seconds = 0.0  # how long the last decision took
        self.redis: Any = None  # the shared store's client when this scaler opened one (closed with it)
        self._task = BackgroundTask("scaling", self._run)

    @property
    def process(self) -> str:
        return self.lease.holder

    def start(self) -> None:
        if self._config().pools:
            self._task.start()

    async def close(self) -> None:
        await self._task.stop()
        try:
            await self.lease.release()
        except Exception as exc:  # the lease expires by itself
            log.warning("scaling: could not release the lease: %s", exc)
        for _pool, actuator in self._actuators.values():
            await actuator.close()
        self._actuators.clear()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    async def _run(self) -> None:
        while True:  # the first round after one interval: rates need two samples
            await asyncio.sleep(self._config().interval)
            try:
                await self.tick()
            except Exception:
                log.exception("scaling: a round failed")

    async def tick(self) -> None:
        """Publish this process's samples; if it holds the lease, decide every pool."""
        config = self._config()
        now = self.clock.time()
        ttl = config.lease  # a sample outlives one missed interval, never a stopped process for long
        for name, pool in config.pools.items():
            meter = self._meters.setdefault(name, PoolMeter())
            sample = meter.measure(self._states(pool), now)
            try:
                await self.board.publish(name, self.process, sample, ttl)
            except Exception as exc:
                log.warning("scaling: could not publish the signals of pool %s: %s", name, exc)
        try:
            leader = await self.lease.hold()
        except Exception as exc:
            log.warning("scaling: the lease could not be taken or renewed: %s", exc)
            leader = False
        if leader and not self.leader:
            await self._take_over(config)
        self.leader = leader
        if leader:
            await self.decide_all(config, now)

    async def _take_over(self, config: ScalingConfig) -> None:
        """A new leader continues from what the previous one left in the shared store."""
        for name in config.pools:
            try:
                saved = await self.board.load_state(name)
            except Exception as exc:
                log.warning("scaling: the state of pool %s could not be read: %s", name, exc)
                continue
            if saved:
                self.pools[name] = PoolStatus(
                    replicas=int(saved["replicas"]),
                    desired=int(saved["desired"]),
                    last_up=saved.get("last_up"),
                    last_down=saved.get("last_down"),
                )

    async def decide_all(self, config: ScalingConfig, now: float) -> None:
        ttl = config.lease
        for name, pool in config.pools.items():
            samples = await self.board.collect(name, now, ttl)
            signals = aggregate(samples)
            status = self.pools.get(name)
            if status is None:
                start = pool.initial_replicas if pool.initial_replicas is not None else pool.min_replicas
                status = self.pools[name] = PoolStatus(start, start)
            began = time.perf_counter()
            decision = decide(pool, status.replicas, signals, status.last_up, status.last_down, now)
            self.decide_seconds = time.perf_counter() - began
            await self._settle(name, pool, status, decision, signals.to_json(), now, ttl)

    async def _settle(
        self,
        name: str,
        pool: ScalingPool,
        status: PoolStatus,
        decision: Decision,
        signals: Mapping[str, Any],
        now: float,
        ttl: float,
    ) -> None:
        desired, reason = decision.desired, decision.reason
        blocked: str | None = None
        quota: int | None = None
        quota_error: str | None = None
        if desired > decision.current:
            try:
                quota = await self.quotas.max_instances(pool)
            except StoreError as exc:
                quota_error = str(exc)
                self.metrics.quota_unreadable.labels(name).inc()
                log.warning(
                    "scaling: pool %s scales up from %d to %d without its quota, which could not be read: %s",
                    name,
                    decision.current,
                    desired,
                    exc,
                )
            if quota is not None and desired > quota:
                capped = max(quota, decision.current)
                blocked = (
                    f"the instance quota {quota} of {'tenant ' + pool.tenant if pool.tenant else 'plan ' + str(pool.plan)}"
                    f" allows no more than {quota} replicas (now {decision.current}, wanted {desired})"
                )
                self.metrics.blocked.labels(name).inc()
                log.warning("scaling: scale-up of pool %s blocked: %s", name, blocked)
                if self._audit is not None:
                    self._audit.record(
                        SCALE_BLOCKED_EVENT,
                        actor="scaler",
                        tenant=pool.tenant,
                        target=name,
                        before=decision.current,
                        after=desired,
                        detail={"quota": quota, "current": decision.current, "wanted": desired, "reason": reason},
                    )
                desired = capped
        changed = desired != decision.current
        doc: dict[str, Any] = {
            "from": decision.current,
            "to": desired,
            "wanted": decision.desired,
            "direction": decision.direction if changed else "hold",
            "reason": reason,
            "signals": dict(signals),
            "ratios": {k: round(v, 4) for k, v in decision.ratios.items()},
            "blocked": blocked is not None,
            "blocked_reason": blocked,
            "quota": quota,
            "quota_error": quota_error,
            "leader": self.process,
            "ts": now,
        }
        status.desired = desired
        status.last_decision = doc
        self.metrics.desired.labels(name).set(desired)
        if changed:
            if desired > decision.current:
                status.last_up = now
            else:
                status.last_down = now
            status.replicas = desired
            self.metrics.decisions.labels(name, "up" if desired > decision.current else "down").inc()
            log.info("scaling: pool %s from %d to %d replicas: %s", name, decision.current, desired, reason)
        if changed or blocked is not None or reason != status.last_reason:
            status.last_reason = reason
            try:
                await self.history.append(name, int(now * 1000), doc)
            except StoreError as exc:
                log.warning("scaling: the decision for pool %s was not recorded: %s", name, exc)
        if changed:
            await self._act(name, pool, desired, doc)
            try:
                await self.board.save_state(name, status.to_json(), max(ttl, pool.cooldown_down) * 4)
            except Exception as exc:
                log.warning("scaling: the state of pool %s was not shared: %s", name, exc)

    async def _act(self, name: str, pool: ScalingPool, replicas: int, doc: dict[str, Any]) -> None:
        held = self._actuators.get(name)
        if held is None or held[0] != pool.actuator:
            if held is not None:
                await held[1].close()
            held = self._actuators[name] = (pool.actuator, self._make_actuator(pool))
        actuator = held[1]
        try:
            await actuator.apply(name, replicas, doc)
        except ScalingActionFailed as exc:
            self.metrics.actuator_failures.labels(name, actuator.name).inc()
            log.error("scaling: pool %s: %s", name, exc)

    def snapshot(self) -> dict[str, Any]:
        """Each pool's state for the admin API."""
        config = self._config()
        now = self.clock.time()
        pools = []
        for name, pool in config.pools.items():
            status = self.pools.get(name)
            last_up = status.last_up if status else None
            last = max((t for t in (last_up, status.last_down if status else None) if t is not None), default=None)
            pools.append(
                {
                    "pool": name,
                    "model": pool.model,
                    "tenant": pool.tenant,
                    "plan": pool.plan,
                    "min_replicas": pool.min_replicas,
                    "max_replicas": pool.max_replicas,
                    "replicas": status.replicas if status else None,
                    "desired": status.desired if status else None,
                    "cooldown_up_left": max(0.0, pool.cooldown_up - (now - last_up)) if last_up is not None else 0.0,
                    "cooldown_down_left": max(0.0, pool.cooldown_down - (now - last)) if last is not None else 0.0,
                    "last_decision": status.last_decision if status else None,
                    "actuator": pool.actuator.type,
                }
            )
        return {"process": self.process, "leader": self.leader, "interval": config.interval, "pools": pools}
