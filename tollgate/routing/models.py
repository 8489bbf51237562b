"""Routes: a model name names a group of deployments, a balancing strategy and its fallback chains.

Compiled once per config version (:func:`compile_routes`); the live state of
each deployment comes from the registry on ``GatewayState`` and survives reloads.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from tollgate.config.model import Config, Deployment, Model
from tollgate.errors import NotFound
from tollgate.routing.balancing import (
    STRATEGY_CODES,
    WEIGHTED_ROUND_ROBIN,
    DeploymentRegistry,
    DeploymentState,
    choose,
    queue_candidate,
)

__all__ = ["ModelRoute", "compile_routes", "route"]


class ModelRoute:
    """One model of one config version: its deployments in rotation, their live states, its fallbacks."""

    __slots__ = (
        "name",
        "model",
        "deployments",
        "states",
        "strategy",
        "fallbacks",
        "context_fallbacks",
        "fallback_on_status",
        "divert",
        "queue",
        "total_timeout",
        "_cycle",
        "_turn",
    )

    def __init__(
        self,
        model: Model,
        states: tuple[DeploymentState, ...],
        deployments: tuple[Deployment, ...],
        retry_statuses: frozenset[int],
    ) -> None:
        self.name = model.name
        self.model = model
        self.deployments = deployments
        self.states = states
        self.strategy = STRATEGY_CODES[model.routing.strategy]
        routing = model.routing
        self.fallback_on_status = routing.fallback_on_status
        # Upstream statuses the attempt loop wants to see as errors rather than relayed as they are.
        self.divert = (
            retry_statuses
            | routing.fallback_on_status
            | (frozenset({400}) if routing.context_window_fallbacks else frozenset())
        )
        self.queue = routing.queue
        self.total_timeout = 600.0  # the longest total timeout of its upstreams (bounds retry backoff)
        # Linked by compile_routes once every route exists: the whole chains, transitively, without this model.
        self.fallbacks: tuple[ModelRoute, ...] = ()
        self.context_fallbacks: tuple[ModelRoute, ...] = ()
        self._cycle = itertools.cycle(_smooth_weighted_sequence(deployments))
        self._turn = 0

    def start(self) -> int:
        """Where this request's scan of the deployments begins (the rotation)."""
        if self.strategy == WEIGHTED_ROUND_ROBIN:
            return next(self._cycle)
        turn = self._turn + 1
        self._turn = turn if turn < len(self.states) else 0
        return self._turn

    def pick(self, start: int, tried: int, now: float, tokens: int) -> int:
        return choose(self.states, self.strategy, start, tried, now, tokens)

    def queue_pick(self, tried: int, now: float, tokens: int) -> int:
        return queue_candidate(self.states, tried, now, tokens) if self.queue else -1

    def unavailable_reason(self, now: float, tokens: int) -> tuple[str, float]:
        """Why no deployment can take a request now, and when one might (seconds, 0 = unknown)."""
        reasons: list[str] = []
        soonest = 0.0
        for deployment, state in zip(self.deployments, self.states):
            why = None
            if not state.breaker.would_admit():
                wait = state.breaker.retry_in()
                why = f"circuit {state.breaker.state}" + (f" for {wait:.1f}s" if wait else "")
                soonest = wait if not soonest else min(soonest, wait)
            else:
                why = state.blocked(now, tokens)
                if why is None and state.queue is not None and not state.queue.has_free_slot:
                    why = "at max_concurrency"
                if why == "rate-limited upstream":
                    wait = state.cooling_until - now
                    soonest = wait if not soonest else min(soonest, wait)
            reasons.append(f"{deployment.upstream}: {why or 'failed'}")
        return f"{self.name} ({', '.join(reasons)})", soonest


def _smooth_weighted_sequence(deployments: tuple[Deployment, ...]) -> list[int]:
    """Smooth weighted round robin, precomputed over one full period (at most 1,000 turns)."""
    total = sum(d.weight for d in deployments) or len(deployments)
    period = min(total, 1000)
    current = [0] * len(deployments)
    sequence: list[int] = []
    for _ in range(period):
        for i, d in enumerate(deployments):
            current[i] += d.weight or 1
        best = max(range(len(deployments)), key=current.__getitem__)
        current[best] -= total
        sequence.append(best)
    return sequence


def compile_routes(config: Config, registry: DeploymentRegistry) -> Mapping[str, ModelRoute]:
    """Every model's route, its deployments bound to their live states, fallback chains linked."""
    resilience = config.resilience
    routes: dict[str, ModelRoute] = {}
    for name, model in config.models.items():
        active = (
            tuple(d for d in model.deployments if d.weight > 0) or model.deployments
        )  # zero weight = out of rotation
        states = tuple(registry.state_for(d, config.upstreams[d.upstream], resilience) for d in active)
        routes[name] = r = ModelRoute(model, states, active, resilience.retries.statuses)
        r.total_timeout = max(config.upstreams[d.upstream].timeouts.total for d in active)
    for r in routes.values():
        r.fallbacks = _chain(r.name, "fallbacks", routes)
        r.context_fallbacks = _chain(r.name, "context_window_fallbacks", routes)
    return routes


def _chain(name: str, field: str, routes: Mapping[str, ModelRoute]) -> tuple[ModelRoute, ...]:
    """Depth-first expansion of a fallback list: a → [b, c], b → [d] gives b, d, c (each once, never ``name``)."""
    seen = {name}
    out: list[ModelRoute] = []

    def visit(model: str) -> None:
        for target in getattr(routes[model].model.routing, field):
            if target in seen or target not in routes:
                continue
            seen.add(target)
            out.append(routes[target])
            visit(target)

    visit(name)
    return tuple(out)


def route(model: str | None, routes: Mapping[str, ModelRoute]) -> ModelRoute:
    """The route of the model a request asked for; :class:`NotFound` for a model the config does not have."""
    model_route = routes.get(model or "")
    if model_route is None:
        raise NotFound(
            f"the model {model!r} does not exist or you do not have access to it",
            param="model",
            code="model_not_found",
        )
    return model_route
