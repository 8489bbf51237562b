"""Route stage: the requested model names a group of deployments, tried in the order picked here."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from .config.model import Config, Deployment, Model
from .context import RequestContext
from .errors import NotFound

__all__ = ["ModelRoute", "compile_routes", "route"]


@dataclass(slots=True)
class ModelRoute:
    """A model's deployments in smooth weighted round-robin order (zero weight = out of rotation)."""

    model: Model
    order: tuple[Deployment, ...]
    cursor: itertools.cycle[int]

    @classmethod
    def build(cls, model: Model) -> ModelRoute:
        active = [d for d in model.deployments if d.weight > 0] or list(model.deployments)
        # Smooth weighted round robin, precomputed over one full period.
        total = sum(d.weight for d in active) or len(active)
        period = min(total, 1000)
        current = [0] * len(active)
        sequence: list[int] = []
        for _ in range(period):
            for i, d in enumerate(active):
                current[i] += d.weight or 1
            best = max(range(len(active)), key=current.__getitem__)
            current[best] -= total
            sequence.append(best)
        return cls(model=model, order=tuple(active), cursor=itertools.cycle(sequence))

    def pick(self) -> tuple[Deployment, ...]:
        """The next deployment first, then the others as retry candidates."""
        first = next(self.cursor)
        if len(self.order) == 1:
            return self.order
        return (self.order[first],) + self.order[:first] + self.order[first + 1 :]


def compile_routes(config: Config) -> Mapping[str, ModelRoute]:
    return {name: ModelRoute.build(model) for name, model in config.models.items()}


def route(ctx: RequestContext, routes: Mapping[str, ModelRoute]) -> None:
    model_route = routes.get(ctx.model or "")
    if model_route is None:
        raise NotFound(
            f"the model {ctx.model!r} does not exist or you do not have access to it",
            param="model",
            code="model_not_found",
        )
    ctx.deployments = model_route.pick()
