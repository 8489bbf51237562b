"""The ``resilience:`` section and the routing fields of ``models:``: the policies, and the fallback graph's check."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, Field, Strict
from pydantic_core import PydanticCustomError

from tollgate.config.validation import Found, check, section
from tollgate.config.values import Bool, Duration, DurationOrZero, Share

__all__ = [
    "STRATEGIES",
    "BreakerPolicy",
    "DeploymentLimits",
    "HealthProbes",
    "HotspotPolicy",
    "HttpStatuses",
    "ModelRouting",
    "ProactiveFallback",
    "QueuePolicy",
    "Resilience",
    "RetryPolicy",
    "SheddingPolicy",
    "fallback_graph_problems",
]

STRATEGIES = ("weighted_round_robin", "least_inflight", "lowest_latency")


def _error_statuses(statuses: frozenset[int]) -> frozenset[int]:
    bad = sorted(s for s in statuses if not 400 <= s <= 599)
    if bad:
        raise PydanticCustomError("config", "must hold error statuses 400..599 (got {bad})", {"bad": bad[0]})
    return statuses


# Upstream error statuses (400..599).
HttpStatuses = Annotated[frozenset[Annotated[int, Strict()]], AfterValidator(_error_statuses)]
Count = Annotated[int, Strict(), Field(ge=1)]


@section
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max: Annotated[int, Strict(), Field(ge=0, le=10)] = 2
    """Attempts per request are at most 1 + max, fallback hops included."""
    statuses: HttpStatuses = frozenset({429, 500, 502, 503, 504})
    on_connect_error: Bool = True
    on_timeout: Bool = True
    backoff_base: Duration = 0.05
    """Before re-sending to the same deployment: uniform(0, min(backoff_cap, backoff_base * 2**n)) (full jitter)."""
    backoff_cap: Duration = 2.0
    retry_after_cap: DurationOrZero = 5.0
    """An upstream Retry-After up to this long is waited out; a longer one means "not this deployment"."""
    budget_ratio: Share = 0.2
    """Retry budget: retries within the window <= budget_floor + budget_ratio * requests within the window."""
    budget_floor: Annotated[int, Strict(), Field(ge=0)] = 10
    budget_window: Duration = 10.0

    @check
    def backoff_cap_covers_base(self) -> Found:
        if self.backoff_cap < self.backoff_base:
            yield "backoff_cap", "must be at least backoff_base"


@section
@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """One circuit breaker per deployment."""

    enabled: Bool = True
    consecutive_failures: Count = 5
    error_rate: Share = 0.5
    """Rates over a sliding window, judged once the window holds min_calls calls; 0 turns a rate off."""
    slow_call_rate: Share = 0.0
    slow_call_duration: Duration = 30.0
    window: Duration = 30.0
    min_calls: Count = 20
    cool_down: Duration = 5.0
    """Open for cool_down, doubling on each trip that follows a failed half-open, up to cool_down_max."""
    cool_down_max: Duration = 120.0
    half_open_probes: Annotated[int, Strict(), Field(ge=1, le=1000)] = 3
    """Exactly this many requests probe a half-open deployment."""

    @check
    def cool_down_max_covers_cool_down(self) -> Found:
        if self.cool_down_max < self.cool_down:
            yield "cool_down_max", "must be at least cool_down"


@section
@dataclass(frozen=True, slots=True)
class HealthProbes:
    enabled: Bool = False
    interval: Duration = 10.0
    timeout: Duration = 2.0
    path: Annotated[str, Strict(), Field(min_length=1)] | None = None
    """Probed under each upstream's base URL; by default its provider's list of models: /models (openai),
    /openai/v1/models or /openai/models?api-version=... (azure), /v1/models (anthropic)."""
    unhealthy_after: Count = 2
    healthy_after: Count = 1

    @check
    def path_fits_a_request_line(self) -> Found:
        if self.path is None:
            return
        if not self.path.startswith("/"):
            yield "path", "must start with /"
        elif any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in self.path):
            yield "path", "must not contain spaces or control characters (it goes into the request line)"


@section
@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """A full queue, or a request past its deadline: this status, code queue_timeout, Retry-After."""

    size: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 1000
    """Waiting requests per deployment queue; beyond it a request is refused at once."""
    deadline: Duration = 5.0
    status: Annotated[int, Strict(), Field(ge=429, le=503)] = 503
    """Status after the deadline (or with a full queue): 503 (capacity) or 429 (slow down)."""

    @check
    def status_is_429_or_503(self) -> Found:
        if self.status not in (429, 503):
            yield "status", "must be 429 or 503"


@section
@dataclass(frozen=True, slots=True)
class SheddingPolicy:
    max_inflight: Annotated[int, Strict(), Field(ge=0)] = 0
    """Past it, lowest priority first gets 503 + Retry-After (0: no in-flight ceiling)."""
    loop_lag: DurationOrZero = 0.0
    """Event-loop lag that counts as overloaded (0: not judged on lag)."""
    lag_interval: Duration = 0.1
    reserved_share: Share = 0.2
    """Kept for requests of priority >= top_priority."""
    top_priority: Annotated[int, Strict(), Field(ge=1, le=100)] = 1
    retry_after: Duration = 1.0

    @property
    def enabled(self) -> bool:
        return self.max_inflight > 0 or self.loop_lag > 0


@section
@dataclass(frozen=True, slots=True)
class HotspotPolicy:
    enabled: Bool = False
    factor: Annotated[float, Strict(), Field(ge=1.0)] = 10.0
    """Flag a tenant/model whose short-window rate exceeds factor * its baseline (and min_rate)."""
    min_rate: Annotated[float, Strict(), Field(ge=0.0)] = 5.0
    window: Duration = 10.0
    baseline: Duration = 600.0
    limit_rate: Annotated[float, Strict(), Field(ge=0.0)] = 0.0
    """While flagged (for hold), requests above limit_rate per second are refused; 0 = only flag."""
    hold: Duration = 60.0

    @check
    def baseline_outlasts_window(self) -> Found:
        if self.baseline <= self.window:
            yield "baseline", "must be longer than window"


@section
@dataclass(frozen=True, slots=True)
class ProactiveFallback:
    """A model whose error rate or p95 latency over the window passes a trigger is skipped in favour of its
    fallbacks for ``hold``; 0 turns a trigger off."""

    error_rate: Share = 0.0
    p95_latency: DurationOrZero = 0.0
    window: Duration = 30.0
    min_calls: Count = 20
    hold: Duration = 30.0

    @property
    def enabled(self) -> bool:
        return self.error_rate > 0 or self.p95_latency > 0


@section
@dataclass(frozen=True, slots=True)
class Resilience:
    """How the gateway treats flaky providers."""

    retries: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    health: HealthProbes = HealthProbes()
    queue: QueuePolicy = QueuePolicy()
    shedding: SheddingPolicy = SheddingPolicy()
    hotspot: HotspotPolicy = HotspotPolicy()
    proactive_fallback: ProactiveFallback = ProactiveFallback()
    dead_letter_size: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 1000
    """Failed requests kept (metadata only) for GET /admin/dead-letters."""


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


def fallback_graph_problems(routing: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(path under models, reason)`` for every fallback naming an unknown model or itself, and every cycle."""
    models = routing
    for field in ("fallbacks", "context_window_fallbacks"):
        graph: dict[str, tuple[str, ...]] = {}
        for name, model in models.items():
            targets: tuple[str, ...] = getattr(model, field)
            for i, target in enumerate(targets):
                where = f"{name}.{field}[{i}]"
                if target == name:
                    yield where, "a model cannot fall back to itself"
                elif target not in models:
                    known = ", ".join(sorted(models)) or "none"
                    yield where, f"unknown model {target!r} (known: {known})"
                elif targets.index(target) != i:
                    yield where, f"{target!r} is listed twice"
            graph[name] = tuple(t for t in targets if t in models and t != name)
        for cycle in _cycles(graph):
            yield f"{cycle[0]}.{field}", "fallback cycle: " + " -> ".join(cycle)


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
                    found.append([*trail[trail.index(nxt) :], nxt])
                elif colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    trail.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                trail.pop()
    return found
