"""A scaler under test: a manual clock, simulated signals published as another process, an in-memory audit log."""

from __future__ import annotations

from typing import Any

from tollgate.accounting.audit import AuditLog
from tollgate.accounting.metrics import GatewayMetrics
from tollgate.clock import ManualClock
from tollgate.config.accounting import AuditConfig, MetricsConfig
from tollgate.config.scaling import ScalingConfig, ScalingPool
from tollgate.errors import StoreUnavailable
from tollgate.scaling.board import LocalBoard, SignalBoard
from tollgate.scaling.history import MemoryHistory
from tollgate.scaling.lease import Lease, SoleLease
from tollgate.scaling.metrics import ScalingMetrics
from tollgate.scaling.scaler import Autoscaler
from tollgate.scaling.signals import Sample


def pool(**fields: Any) -> ScalingPool:
    values: dict[str, Any] = {"model": "gpt-4o-mini", "min_replicas": 1, "max_replicas": 20}
    values.setdefault("targets", {"inflight_per_replica": 10})
    values.update(fields)
    from tollgate.config.validation import Problems, validate

    problems = Problems()
    built = validate(ScalingPool, values, "pool", problems)
    assert not problems, problems.lines
    assert built is not None
    return built


class Quotas:
    """A quota source the test steers: a number, None, or failing."""

    def __init__(self, quota: int | None = None, failing: bool = False) -> None:
        self.quota, self.failing, self.reads = quota, failing, 0

    async def max_instances(self, p: ScalingPool) -> int | None:
        self.reads += 1
        if self.failing:
            raise StoreUnavailable("the registry store is down")
        return self.quota


class Recorder:
    """An actuator that remembers what it was told."""

    name = "recorder"

    def __init__(self) -> None:
        self.applied: list[tuple[str, int]] = []

    async def apply(self, p: str, replicas: int, doc: dict[str, Any]) -> None:
        self.applied.append((p, replicas))

    async def close(self) -> None:
        return None


class Harness:
    def __init__(
        self,
        pools: dict[str, ScalingPool],
        *,
        quotas: Quotas | None = None,
        board: SignalBoard | None = None,
        lease: Lease | None = None,
        clock: ManualClock | None = None,
        interval: float = 15.0,
    ) -> None:
        self.clock = clock or ManualClock()
        self.config = ScalingConfig(pools=pools, interval=interval, lease=interval * 2)
        self.board = board or LocalBoard()
        self.quotas = quotas or Quotas()
        self.audit = AuditLog(AuditConfig(), clock=self.clock.time)
        self.gateway_metrics = GatewayMetrics(MetricsConfig())
        self.actuator = Recorder()
        self.scaler = Autoscaler(
            lambda: self.config,
            states=lambda p: (),
            board=self.board,
            lease=lease or SoleLease("test-process"),
            quotas=self.quotas,
            history=MemoryHistory(100),
            audit=self.audit,
            metrics=ScalingMetrics(self.gateway_metrics),
            clock=self.clock,
            actuators=lambda p: self.actuator,
        )

    async def load(self, name: str, *, inflight: int = 0, p95_ms: float | None = None) -> None:
        """The fleet's load on ``name`` now, as another gateway process measured it."""
        sample = Sample(at=self.clock.time(), inflight=inflight, p95_latency_ms=p95_ms)
        await self.board.publish(name, "another-process", sample, self.config.lease)

    async def step(self, name: str, seconds: float, *, inflight: int) -> int:
        """Move the clock, publish the load, run one round; the pool's replicas after it."""
        self.clock.advance(seconds)
        await self.load(name, inflight=inflight)
        await self.scaler.tick()
        return self.scaler.pools[name].replicas

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.gateway_metrics.sample_value(name, labels) or 0.0
