"""Per-deployment live state (breaker, in-flight, latency EWMA, health, provider limits) and the balancing strategies.

A :class:`DeploymentState` belongs to the deployment's identity (upstream name,
base URL, upstream model name), not to a config version: it lives in the
:class:`DeploymentRegistry` on ``GatewayState``, so a reload keeps breaker
states, latencies and in-flight counts. The compiled routes of each version
hold direct references to these objects.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable

from tollgate.clock import Clock
from tollgate.config.model import Deployment, Upstream
from tollgate.config.resilience import DeploymentLimits, QueuePolicy, Resilience
from tollgate.routing.breaker import CLOSED, OPEN, Breaker
from tollgate.routing.slot_queue import FairQueue

__all__ = [
    "EWMA_ALPHA",
    "LEAST_INFLIGHT",
    "LOWEST_LATENCY",
    "RECENT_LATENCIES",
    "STRATEGY_CODES",
    "WEIGHTED_ROUND_ROBIN",
    "DeploymentRegistry",
    "DeploymentState",
    "MinuteWindow",
    "choose",
    "deployment_key",
    "queue_candidate",
]

log = logging.getLogger("tollgate.balancing")

EWMA_ALPHA = 0.3
RECENT_LATENCIES = 256
WEIGHTED_ROUND_ROBIN = 0
LEAST_INFLIGHT = 1
LOWEST_LATENCY = 2
STRATEGY_CODES = {
    "weighted_round_robin": WEIGHTED_ROUND_ROBIN,
    "least_inflight": LEAST_INFLIGHT,
    "lowest_latency": LOWEST_LATENCY,
}


class MinuteWindow:
    """Sliding-window estimate of a per-minute count (current minute + the previous one, weighted)."""

    __slots__ = ("limit", "_minute", "_current", "_previous")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._minute = 0
        self._current = 0
        self._previous = 0

    def _estimate(self, now: float) -> float:
        minute = int(now // 60)
        if minute != self._minute:
            self._previous = self._current if minute == self._minute + 1 else 0
            self._current = 0
            self._minute = minute
        return self._previous * (1.0 - (now % 60) / 60.0) + self._current

    def has_room(self, now: float, cost: int = 1) -> bool:
        return self._estimate(now) + cost <= self.limit

    def add(self, now: float, cost: int = 1) -> None:
        self._estimate(now)
        self._current += cost

    def correct(self, now: float, delta: int) -> None:
        """A count added earlier, now known to be ``delta`` more (fewer, when negative); the current minute's count
        never goes below zero (the count corrected may belong to the minute before)."""
        self._estimate(now)
        current = self._current + delta
        self._current = current if current > 0 else 0


class DeploymentState:
    """What the gateway knows about one deployment right now."""

    __slots__ = (
        "key",
        "label",
        "upstream",
        "model",
        "breaker",
        "inflight",
        "latency",
        "healthy",
        "cooling_until",
        "rpm",
        "tpm",
        "queue",
        "calls",
        "failures",
        "throttled",
        "tokens",
        "recent_latencies",
    )

    def __init__(self, key: str, deployment: Deployment, resilience: Resilience, clock: Clock) -> None:
        self.key = key
        # Its name in metrics and readiness: from the config (upstream and model), so a bounded set.
        self.label = f"{deployment.upstream}/{deployment.model}"
        self.upstream = deployment.upstream
        self.model = deployment.model
        self.breaker = Breaker(key, resilience.breaker, clock)
        self.inflight = 0
        self.latency = 0.0  # EWMA of time to first byte, seconds (0 = no sample yet)
        self.healthy = True  # set by active health probes
        self.cooling_until = 0.0  # an upstream 429 asked us to stay away until then
        self.rpm: MinuteWindow | None = None
        self.tpm: MinuteWindow | None = None
        self.queue: FairQueue | None = None
        self.calls = 0
        self.failures = 0
        self.throttled = 0  # 429s from the upstream (a scaling signal)
        self.tokens = 0  # tokens of the requests sent to it, as their answers counted them (a scaling signal)
        # The latest times to first byte (seconds), for the scaler's p95; bounded, appended once per served call.
        self.recent_latencies: deque[float] = deque(maxlen=RECENT_LATENCIES)

    def configure(self, limits: DeploymentLimits, resilience: Resilience) -> None:
        self.breaker.configure(resilience.breaker)
        self.rpm = _window(self.rpm, limits.rpm)
        self.tpm = _window(self.tpm, limits.tpm)
        self.queue = _queue(self.queue, limits.max_concurrency, resilience.queue)

    def observe_latency(self, seconds: float) -> None:
        self.recent_latencies.append(seconds)
        latency = self.latency
        self.latency = seconds if latency == 0.0 else latency + EWMA_ALPHA * (seconds - latency)

    @property
    def usable(self) -> bool:
        """Whether it can serve at all for now: its health probes did not take it out of rotation, and its breaker
        is not open (an open breaker whose cool-down is over counts as usable: the next request probes it).

        What metrics and readiness report; the passing limits (rpm, tpm, concurrency, an upstream's 429) do not
        count, they pass within seconds.
        """
        breaker = self.breaker
        return self.healthy and (breaker.state is not OPEN or breaker.retry_in() == 0.0)

    def takes(self, now: float, tokens: int) -> bool:
        """Whether it can take a request now: its breaker admits it, it is not :meth:`blocked`, and a slot is free."""
        breaker = self.breaker
        if breaker.state is not CLOSED and not breaker.would_admit():
            return False
        if (
            self.rpm is not None or self.tpm is not None or not self.healthy or now < self.cooling_until
        ) and self.blocked(now, tokens) is not None:
            return False
        queue = self.queue
        return queue is None or queue.has_free_slot

    def blocked(self, now: float, tokens: int) -> str | None:
        """Why this deployment cannot take a request now (None when it can), breaker aside."""
        if not self.healthy:
            return "unhealthy"
        if now < self.cooling_until:
            return "rate-limited upstream"
        if self.rpm is not None and not self.rpm.has_room(now):
            return "at its rpm limit"
        if self.tpm is not None and not self.tpm.has_room(now, tokens):
            return "at its tpm limit"
        return None

    def snapshot(self) -> dict[str, object]:
        """JSON-able view for operators (admin API, logs)."""
        b = self.breaker
        return {
            "deployment": self.key,
            "breaker": b.state,
            "breaker_retry_in": round(b.retry_in(), 3),
            "breaker_transitions": dict(b.transitions),
            "inflight": self.inflight,
            "latency_ewma": round(self.latency, 6),
            "healthy": self.healthy,
            "usable": self.usable,
            "calls": self.calls,
            "failures": self.failures,
            "queued": self.queue.waiting if self.queue is not None else 0,
        }


def _window(old: MinuteWindow | None, limit: int | None) -> MinuteWindow | None:
    if limit is None:
        return None
    if old is None:
        return MinuteWindow(limit)
    old.limit = limit
    return old


def _queue(old: FairQueue | None, limit: int | None, policy: QueuePolicy) -> FairQueue | None:
    if limit is None:
        return None
    if old is None:
        return FairQueue(limit, policy.size)
    old.set_limit(limit, policy.size)
    return old


def deployment_key(deployment: Deployment, upstream: Upstream) -> str:
    return f"{deployment.upstream}/{deployment.model}@{upstream.base_url}"


class DeploymentRegistry:
    """Deployment states by identity; :meth:`sync` makes it match a config version."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.states: dict[str, DeploymentState] = {}

    def state_for(self, deployment: Deployment, upstream: Upstream, resilience: Resilience) -> DeploymentState:
        key = deployment_key(deployment, upstream)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = DeploymentState(key, deployment, resilience, self.clock)
        state.configure(deployment.limits, resilience)
        return state

    def prune(self, live: Iterable[str]) -> None:
        """Forget deployments that left the config (in-flight requests keep their own references)."""
        keep = set(live)
        for key in [k for k in self.states if k not in keep]:
            del self.states[key]

    def snapshot(self) -> list[dict[str, object]]:
        return [s.snapshot() for s in self.states.values()]


def choose(states: tuple[DeploymentState, ...], strategy: int, start: int, tried: int, now: float, tokens: int) -> int:
    """Index of the deployment to try next, or -1 when none can take the request now.

    Candidates are scanned from ``start`` (the round-robin position, so ties rotate);
    skipped: those already ``tried`` (bit mask), whose breaker refuses, that are
    unhealthy, cooling after a 429, at their rpm/tpm limit, or at max_concurrency.
    Weighted round robin takes the first candidate; the other strategies the one
    with the fewest in flight or the lowest latency EWMA (unmeasured first).
    """
    n = len(states)
    if n == 1:  # one deployment (the usual model): the loop below, for it alone
        s = states[0]
        if tried & 1 or not s.takes(now, tokens):
            return -1
        return 0
    best = -1
    best_key = 0.0
    for i in range(n):
        j = start + i
        if j >= n:
            j -= n
        if tried >> j & 1:
            continue
        s = states[j]
        if not s.takes(now, tokens):
            continue
        if strategy == WEIGHTED_ROUND_ROBIN:
            return j
        key = s.inflight if strategy == LEAST_INFLIGHT else s.latency
        if best < 0 or key < best_key:
            best, best_key = j, key
    return best


def queue_candidate(states: tuple[DeploymentState, ...], tried: int, now: float, tokens: int) -> int:
    """When every usable deployment is at max_concurrency: the one with the shortest queue (-1 if none)."""
    best = -1
    for j, s in enumerate(states):
        if tried >> j & 1 or s.queue is None:
            continue
        if not s.breaker.would_admit() or s.blocked(now, tokens) is not None:
            continue
        if best < 0 or s.queue.waiting < states[best].queue.waiting:  # type: ignore[union-attr]
            best = j
    return best
