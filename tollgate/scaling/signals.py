"""A pool's signals: what one process measures (:class:`Sample`), and their sum over the fleet (:class:`Signals`).

A process reads the live state its requests already keep per deployment
(in-flight and queued counts, calls, tokens served, 429s from the
upstream, the latest times to first byte) once per interval; rates are the
change of those counters since its previous sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tollgate.routing.balancing import DeploymentState

__all__ = ["PoolMeter", "Sample", "Signals", "aggregate", "p95"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One process's measurement of one pool at ``at`` (wall seconds)."""

    at: float
    inflight: int = 0
    queued: int = 0
    tokens_per_second: float = 0.0
    upstream_429_per_minute: float = 0.0
    p95_latency_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Sample:
        return cls(
            at=float(doc["at"]),
            inflight=int(doc.get("inflight", 0)),
            queued=int(doc.get("queued", 0)),
            tokens_per_second=float(doc.get("tokens_per_second", 0.0)),
            upstream_429_per_minute=float(doc.get("upstream_429_per_minute", 0.0)),
            p95_latency_ms=None if doc.get("p95_latency_ms") is None else float(doc["p95_latency_ms"]),
        )


@dataclass(frozen=True, slots=True)
class Signals:
    """A pool's signals summed over every live process (p95: the highest process's, the pessimistic view)."""

    processes: int = 0
    inflight: int = 0
    queued: int = 0
    tokens_per_second: float = 0.0
    upstream_429_per_minute: float = 0.0
    p95_latency_ms: float | None = None

    def measured(self, target: str, replicas: int) -> float:
        """The value compared with ``target`` (a name of :data:`~tollgate.config.scaling.SIGNALS`)."""
        per = max(replicas, 1)
        if target == "inflight_per_replica":
            return self.inflight / per
        if target == "queue_per_replica":
            return self.queued / per
        if target == "tokens_per_second_per_replica":
            return self.tokens_per_second / per
        if target == "p95_latency_ms":
            return self.p95_latency_ms or 0.0
        if target == "upstream_429_per_minute":
            return self.upstream_429_per_minute
        raise ValueError(f"unknown scaling signal {target!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(samples: Iterable[Sample]) -> Signals:
    """The fleet's signals from each live process's latest sample."""
    n = inflight = queued = 0
    tokens = throttled = 0.0
    latency: float | None = None
    for s in samples:
        n += 1
        inflight += s.inflight
        queued += s.queued
        tokens += s.tokens_per_second
        throttled += s.upstream_429_per_minute
        if s.p95_latency_ms is not None and (latency is None or s.p95_latency_ms > latency):
            latency = s.p95_latency_ms
    return Signals(n, inflight, queued, tokens, throttled, latency)


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class PoolMeter:
    """One process's sampler of one pool: remembers the counters of its previous sample to turn them into rates."""

    __slots__ = ("_at", "_tokens", "_throttled")

    def __init__(self) -> None:
        self._at: float | None = None
        self._tokens = 0
        self._throttled = 0

    def measure(self, states: Sequence[DeploymentState], now: float) -> Sample:
        """Sample the pool's deployments at wall time ``now`` (O(deployments + latencies kept))."""
        tokens = sum(s.tokens for s in states)
        throttled = sum(s.throttled for s in states)
        latencies = [v for s in states for v in s.recent_latencies]
        elapsed = None if self._at is None else now - self._at
        if elapsed is None or elapsed <= 0:
            tps = per_minute = 0.0
        else:  # a counter that went down belongs to a deployment that left and came back: count from zero
            tps = max(tokens - self._tokens, 0) / elapsed
            per_minute = max(throttled - self._throttled, 0) * 60.0 / elapsed
        self._at, self._tokens, self._throttled = now, tokens, throttled
        latency = p95(latencies)
        return Sample(
            at=now,
            inflight=sum(s.inflight for s in states),
            queued=sum(s.queue.waiting for s in states if s.queue is not None),
            tokens_per_second=tps,
            upstream_429_per_minute=per_minute,
            p95_latency_ms=None if latency is None else latency * 1000.0,
        )
