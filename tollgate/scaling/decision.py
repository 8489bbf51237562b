"""The scaling decision: a pure function of the pool's policy, its replicas, the fleet's signals and the clock."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tollgate.config.scaling import ScalingPool
from tollgate.scaling.signals import Signals

__all__ = ["Decision", "Direction", "decide"]

Direction = Literal["up", "down", "hold"]


@dataclass(frozen=True, slots=True)
class Decision:
    """From ``current`` to ``desired`` replicas, and why. ``ratios`` is each target's measured share of it."""

    current: int
    desired: int
    direction: Direction
    reason: str
    ratios: dict[str, float] = field(default_factory=dict)


def decide(
    pool: ScalingPool,
    current: int,
    signals: Signals,
    last_up: float | None,
    last_down: float | None,
    now: float,
) -> Decision:
    """The desired replica count of ``pool`` now (times are wall seconds; None: never scaled that way).

    Scale up by ``scale_up_factor`` (at least one more) when the signal furthest past its target reaches
    ``up_threshold`` of it and ``cooldown_up`` has passed since the last scale-up; scale down by
    ``scale_down_factor`` (at least one fewer) when every signal is below ``down_threshold`` of its target and
    ``cooldown_down`` has passed since the last scale either way. Always within min_replicas..max_replicas.
    """
    lo, hi = pool.min_replicas, pool.max_replicas
    ratios = {name: signals.measured(name, current) / target for name, target in pool.targets.given().items()}
    pressure = max(ratios.values(), default=0.0)
    busiest = max(ratios, key=ratios.__getitem__) if ratios else ""
    if current < lo:
        return Decision(current, lo, "up", f"below min_replicas {lo}", ratios)
    if current > hi:
        return Decision(current, hi, "down", f"above max_replicas {hi}", ratios)
    if pressure >= pool.up_threshold:
        why = f"{busiest} at {pressure:.2f} of its target (up at {pool.up_threshold:g})"
        if not pool.scale_up:
            return Decision(current, current, "hold", f"{why}; scale-up disabled", ratios)
        if current >= hi:
            return Decision(current, current, "hold", f"{why}; at max_replicas {hi}", ratios)
        if last_up is not None and now - last_up < pool.cooldown_up:
            left = pool.cooldown_up - (now - last_up)
            return Decision(current, current, "hold", f"{why}; scale-up cooling down ({left:.0f}s left)", ratios)
        desired = min(hi, max(current + 1, math.ceil(current * pool.scale_up_factor)))
        return Decision(current, desired, "up", why, ratios)
    if pressure < pool.down_threshold:
        why = (
            f"every signal below {pool.down_threshold:g} of its target (highest {busiest or 'none'} at {pressure:.2f})"
        )
        if not pool.scale_down:
            return Decision(current, current, "hold", f"{why}; scale-down disabled", ratios)
        if current <= lo:
            return Decision(current, current, "hold", f"{why}; at min_replicas {lo}", ratios)
        last = max((t for t in (last_up, last_down) if t is not None), default=None)
        if last is not None and now - last < pool.cooldown_down:
            left = pool.cooldown_down - (now - last)
            return Decision(current, current, "hold", f"{why}; scale-down cooling down ({left:.0f}s left)", ratios)
        desired = max(lo, min(current - 1, math.floor(current * pool.scale_down_factor)))
        return Decision(current, desired, "down", why, ratios)
    return Decision(current, current, "hold", f"within thresholds ({busiest or 'no signal'} at {pressure:.2f})", ratios)
