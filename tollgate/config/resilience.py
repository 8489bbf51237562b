"""The ``resilience:`` section and the routing fields of ``models:``: dataclasses, parsers and cross-checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.config.reader import Node, Problems

__all__ = [
    "STRATEGIES",
    "BreakerPolicy",
    "DeploymentLimits",
    "HealthProbes",
    "HotspotPolicy",
    "ModelRouting",
    "ProactiveFallback",
    "QueuePolicy",
    "Resilience",
    "RetryPolicy",
    "SheddingPolicy",
    "check_model_graph",
    "parse_deployment_limits",
    "parse_model_routing",
    "parse_resilience",
]

STRATEGIES = ("weighted_round_robin", "least_inflight", "lowest_latency")
_ERROR_STATUSES = {"min": 400, "max": 599}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # Attempts per request are at most 1 + max, counting fallback hops.
    max: int = 2
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    on_connect_error: bool = True
    on_timeout: bool = True
    # Before re-sending to the same deployment: uniform(0, min(cap, base * 2**n)) (full jitter).
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    # An upstream Retry-After up to this long is waited out; a longer one means "not this deployment".
    retry_after_cap: float = 5.0
    # Retry budget: retries within the window <= floor + ratio * requests within the window.
    budget_ratio: float = 0.2
    budget_floor: int = 10
    budget_window: float = 10.0


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    enabled: bool = True
    consecutive_failures: int = 5
    # Rates over a sliding window, judged once the window holds min_calls calls; 0 turns a rate off.
    error_rate: float = 0.5
    slow_call_rate: float = 0.0
    slow_call_duration: float = 30.0
    window: float = 30.0
    min_calls: int = 20
    # Open for cool_down, doubling on each trip that follows a failed half-open, up to cool_down_max.
    cool_down: float = 5.0
    cool_down_max: float = 120.0
    half_open_probes: int = 3


@dataclass(frozen=True, slots=True)
class HealthProbes:
    enabled: bool = False
    interval: float = 10.0
    timeout: float = 2.0
    path: str = "/models"
    unhealthy_after: int = 2
    healthy_after: int = 1


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    # Waiting requests per deployment queue; beyond it a request is refused at once.
    size: int = 1000
    deadline: float = 5.0
    # Status after the deadline (or with a full queue): 503 (capacity) or 429 (slow down).
    status: int = 503


@dataclass(frozen=True, slots=True)
class SheddingPolicy:
    max_inflight: int = 0  # 0: no in-flight ceiling
    loop_lag: float = 0.0  # 0: not judged on event-loop lag
    lag_interval: float = 0.1
    reserved_share: float = 0.2
    top_priority: int = 1
    retry_after: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.max_inflight > 0 or self.loop_lag > 0


@dataclass(frozen=True, slots=True)
class HotspotPolicy:
    enabled: bool = False
    # Flag a tenant/model whose short-window rate exceeds factor * its baseline (and min_rate).
    factor: float = 10.0
    min_rate: float = 5.0
    window: float = 10.0
    baseline: float = 600.0
    # While flagged (for hold), requests above limit_rate per second are refused; 0 = only flag.
    limit_rate: float = 0.0
    hold: float = 60.0


@dataclass(frozen=True, slots=True)
class ProactiveFallback:
    # A model whose error rate or p95 latency over the window passes a trigger is skipped in
    # favour of its fallbacks for `hold`; 0 turns a trigger off.
    error_rate: float = 0.0
    p95_latency: float = 0.0
    window: float = 30.0
    min_calls: int = 20
    hold: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.error_rate > 0 or self.p95_latency > 0


@dataclass(frozen=True, slots=True)
class Resilience:
    retries: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    health: HealthProbes = HealthProbes()
    queue: QueuePolicy = QueuePolicy()
    shedding: SheddingPolicy = SheddingPolicy()
    hotspot: HotspotPolicy = HotspotPolicy()
    proactive_fallback: ProactiveFallback = ProactiveFallback()
    dead_letter_size: int = 1000


@dataclass(frozen=True, slots=True)
class DeploymentLimits:
    """A deployment's own provider limits (None = not limited by the gateway)."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class ModelRouting:
    strategy: str = "weighted_round_robin"
    fallbacks: tuple[str, ...] = ()
    context_window_fallbacks: tuple[str, ...] = ()
    # Upstream statuses that send the request to the next model at once (no retry on this one).
    fallback_on_status: frozenset[int] = frozenset()
    # Over every deployment's max_concurrency: wait in the queue (True) or go to the fallbacks (False).
    queue: bool = False


_D_RETRY = RetryPolicy()
_D_BREAKER = BreakerPolicy()
_D_HEALTH = HealthProbes()
_D_QUEUE = QueuePolicy()
_D_SHED = SheddingPolicy()
_D_HOT = HotspotPolicy()
_D_PRO = ProactiveFallback()


def _statuses(node: Node, key: str, default: frozenset[int]) -> frozenset[int]:
    raw = node.raw(key, None)
    if raw is None:
        return default
    if not isinstance(raw, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        node.error(key, "must be a list of HTTP statuses")
        return default
    bad = [s for s in raw if not _ERROR_STATUSES["min"] <= s <= _ERROR_STATUSES["max"]]
    if bad:
        node.error(key, f"must hold error statuses 400..599 (got {bad[0]})")
    return frozenset(raw)


def _share(node: Node, key: str, default: float) -> float:
    return float(node.float(key, default, min=0.0, max=1.0))


def parse_resilience(node: Node) -> Resilience:
    r = node.child("retries")
    retries = RetryPolicy(
        max=r.int("max", _D_RETRY.max, min=0, max=10),
        statuses=_statuses(r, "statuses", _D_RETRY.statuses),
        on_connect_error=r.bool("on_connect_error", _D_RETRY.on_connect_error),
        on_timeout=r.bool("on_timeout", _D_RETRY.on_timeout),
        backoff_base=r.duration("backoff_base", _D_RETRY.backoff_base),
        backoff_cap=r.duration("backoff_cap", _D_RETRY.backoff_cap),
        retry_after_cap=r.duration("retry_after_cap", _D_RETRY.retry_after_cap, positive=False),
        budget_ratio=_share(r, "budget_ratio", _D_RETRY.budget_ratio),
        budget_floor=r.int("budget_floor", _D_RETRY.budget_floor, min=0),
        budget_window=r.duration("budget_window", _D_RETRY.budget_window),
    )
    if retries.backoff_cap < retries.backoff_base:
        r.error("backoff_cap", "must be at least backoff_base")
    r.finish()

    b = node.child("breaker")
    breaker = BreakerPolicy(
        enabled=b.bool("enabled", _D_BREAKER.enabled),
        consecutive_failures=b.int("consecutive_failures", _D_BREAKER.consecutive_failures, min=1),
        error_rate=_share(b, "error_rate", _D_BREAKER.error_rate),
        slow_call_rate=_share(b, "slow_call_rate", _D_BREAKER.slow_call_rate),
        slow_call_duration=b.duration("slow_call_duration", _D_BREAKER.slow_call_duration),
        window=b.duration("window", _D_BREAKER.window),
        min_calls=b.int("min_calls", _D_BREAKER.min_calls, min=1),
        cool_down=b.duration("cool_down", _D_BREAKER.cool_down),
        cool_down_max=b.duration("cool_down_max", _D_BREAKER.cool_down_max),
        half_open_probes=b.int("half_open_probes", _D_BREAKER.half_open_probes, min=1, max=1000),
    )
    if breaker.cool_down_max < breaker.cool_down:
        b.error("cool_down_max", "must be at least cool_down")
    b.finish()

    h = node.child("health")
    health = HealthProbes(
        enabled=h.bool("enabled", _D_HEALTH.enabled),
        interval=h.duration("interval", _D_HEALTH.interval),
        timeout=h.duration("timeout", _D_HEALTH.timeout),
        path=h.str("path", _D_HEALTH.path),
        unhealthy_after=h.int("unhealthy_after", _D_HEALTH.unhealthy_after, min=1),
        healthy_after=h.int("healthy_after", _D_HEALTH.healthy_after, min=1),
    )
    if not health.path.startswith("/"):
        h.error("path", "must start with /")
    elif any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in health.path):
        h.error("path", "must not contain spaces or control characters (it goes into the request line)")
    h.finish()

    q = node.child("queue")
    queue = QueuePolicy(
        size=q.int("size", _D_QUEUE.size, min=0, max=1_000_000),
        deadline=q.duration("deadline", _D_QUEUE.deadline),
        status=q.int("status", _D_QUEUE.status, min=429, max=503),
    )
    if queue.status not in (429, 503):
        q.error("status", "must be 429 or 503")
    q.finish()

    s = node.child("shedding")
    shedding = SheddingPolicy(
        max_inflight=s.int("max_inflight", _D_SHED.max_inflight, min=0),
        loop_lag=s.duration("loop_lag", _D_SHED.loop_lag, positive=False),
        lag_interval=s.duration("lag_interval", _D_SHED.lag_interval),
        reserved_share=_share(s, "reserved_share", _D_SHED.reserved_share),
        top_priority=s.int("top_priority", _D_SHED.top_priority, min=1, max=100),
        retry_after=s.duration("retry_after", _D_SHED.retry_after),
    )
    s.finish()

    t = node.child("hotspot")
    hotspot = HotspotPolicy(
        enabled=t.bool("enabled", _D_HOT.enabled),
        factor=t.float("factor", _D_HOT.factor, min=1.0),
        min_rate=t.float("min_rate", _D_HOT.min_rate, min=0.0),
        window=t.duration("window", _D_HOT.window),
        baseline=t.duration("baseline", _D_HOT.baseline),
        limit_rate=t.float("limit_rate", _D_HOT.limit_rate, min=0.0),
        hold=t.duration("hold", _D_HOT.hold),
    )
    if hotspot.baseline <= hotspot.window:
        t.error("baseline", "must be longer than window")
    t.finish()

    p = node.child("proactive_fallback")
    proactive = ProactiveFallback(
        error_rate=_share(p, "error_rate", _D_PRO.error_rate),
        p95_latency=p.duration("p95_latency", _D_PRO.p95_latency, positive=False),
        window=p.duration("window", _D_PRO.window),
        min_calls=p.int("min_calls", _D_PRO.min_calls, min=1),
        hold=p.duration("hold", _D_PRO.hold),
    )
    p.finish()
    dead_letter_size = node.int("dead_letter_size", 1000, min=0, max=1_000_000)
    node.finish()
    return Resilience(retries, breaker, health, queue, shedding, hotspot, proactive, dead_letter_size)


def parse_deployment_limits(d: Node) -> DeploymentLimits:
    """Read ``rpm``, ``tpm`` and ``max_concurrency`` of one deployment (the caller finishes the node)."""
    return DeploymentLimits(
        rpm=d.int("rpm", None, min=1),
        tpm=d.int("tpm", None, min=1),
        max_concurrency=d.int("max_concurrency", None, min=1),
    )


def parse_model_routing(node: Node) -> ModelRouting:
    """Read the routing fields of one model (the caller finishes the node)."""
    return ModelRouting(
        strategy=node.str("strategy", "weighted_round_robin", choices=STRATEGIES),
        fallbacks=node.str_list("fallbacks", ()),
        context_window_fallbacks=node.str_list("context_window_fallbacks", ()),
        fallback_on_status=_statuses(node, "fallback_on_status", frozenset()),
        queue=node.bool("queue", False),
    )


def check_model_graph(models: Mapping[str, Any], problems: Problems, path: str = "models") -> None:
    """Refuse fallbacks naming an unknown model (or the model itself) and cycles in either chain."""
    for field in ("fallbacks", "context_window_fallbacks"):
        graph: dict[str, tuple[str, ...]] = {}
        for name, model in models.items():
            targets: tuple[str, ...] = getattr(model.routing, field)
            for i, target in enumerate(targets):
                where = f"{path}.{name}.{field}[{i}]"
                if target == name:
                    problems.add(where, "a model cannot fall back to itself")
                elif target not in models:
                    known = ", ".join(sorted(models)) or "none"
                    problems.add(where, f"unknown model {target!r} (known: {known})")
                elif targets.index(target) != i:
                    problems.add(where, f"{target!r} is listed twice")
            graph[name] = tuple(t for t in targets if t in models and t != name)
        for cycle in _cycles(graph):
            problems.add(f"{path}.{cycle[0]}.{field}", "fallback cycle: " + " -> ".join(cycle))


def _cycles(graph: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """One representative of every cycle reachable in ``graph`` (iterative DFS, colours)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    found: list[list[str]] = []
    for start in graph:
        if colour[start] != white:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = [start]
        colour[start] = grey
        while stack:
            node, i = stack[-1]
            edges = graph[node]
            if i < len(edges):
                stack[-1] = (node, i + 1)
                nxt = edges[i]
                if colour[nxt] == grey:
                    found.append(trail[trail.index(nxt) :] + [nxt])
                elif colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    trail.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                trail.pop()
    return found
