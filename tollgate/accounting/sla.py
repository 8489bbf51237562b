"""Latency SLA per plan: gateway overhead against the plan's p99 target, counted and summarised for the admin API."""

from __future__ import annotations

from collections import deque
from itertools import repeat
from operator import lt
from typing import Any

from tollgate.accounting.records import Entry
from tollgate.accounting.tally import Tally
from tollgate.config.accounting import MetricsConfig

__all__ = ["SlaTracker"]

_WINDOW = 10_000  # recent requests per plan kept for the observed p99


class SlaTracker:
    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}
        self._counts: dict[str, list[int]] = {}  # plan -> [requests, violations]

    def observe(self, e: Entry, config: MetricsConfig) -> None:
        self.observe_many(e.plan, [e.overhead_s], config)

    def observe_tally(self, tally: Tally, config: MetricsConfig) -> None:
        """Every request of a flush, one deque extension per plan."""
        plans: dict[str | None, list[float]] = {}
        for (_tenant, plan, *_rest), g in tally:
            plans.setdefault(plan, []).extend(g.overhead_s)
        for plan, overheads in plans.items():
            self.observe_many(plan, overheads, config)

    def observe_many(self, plan: str | None, overheads: list[float], config: MetricsConfig) -> None:
        """Requests of ``plan`` with these gateway overheads (seconds)."""
        plan = plan or "none"
        recent = self._recent.get(plan)
        if recent is None:
            recent = self._recent[plan] = deque(maxlen=_WINDOW)
            self._counts[plan] = [0, 0]
        recent.extend(overheads)
        counts = self._counts[plan]
        counts[0] += len(overheads)
        target = config.sla_target(plan)
        if target is not None:
            counts[1] += sum(map(lt, repeat(target), overheads))

    def report(self, config: MetricsConfig) -> dict[str, Any]:
        plans = {}
        for plan, recent in self._recent.items():
            ordered = sorted(recent)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else None
            target = config.sla_target(plan)
            requests, violations = self._counts[plan]
            plans[plan] = {
                "target_p99_ms": target * 1000 if target is not None else None,
                "observed_p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
                "window": len(ordered),
                "requests": requests,
                "violations": violations,
                "met": None if target is None or p99 is None else p99 <= target,
            }
        return {
            "plans": plans,
            "note": "counts are this process's since it started; the metric tollgate_sla_violations_total sums every worker",
        }
