"""A pool's replica quota: its quota_override, else the max_instances of the plan it (or its tenant) is on."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from tollgate.config.identity import Plan
from tollgate.config.scaling import ScalingPool
from tollgate.errors import StoreError, StoreUnavailable
from tollgate.registry.registry import Registry

__all__ = ["QuotaSource", "RegistryQuotas"]


class QuotaSource(Protocol):
    """Reads a pool's quota: None when the pool has none; raises :class:`StoreError` when it cannot be read."""

    async def max_instances(self, pool: ScalingPool) -> int | None: ...


class RegistryQuotas:
    """Tenants and their plans as the registry holds them (the config file's and the admin API's)."""

    def __init__(self, registry: Registry, plans: Callable[[], Mapping[str, Plan]]) -> None:
        self._registry = registry
        self._plans = plans

    async def max_instances(self, pool: ScalingPool) -> int | None:
        if pool.quota_override is not None:
            return pool.quota_override
        plan_name = pool.plan
        if pool.tenant is not None:
            problems = self._registry.problems()
            if problems:
                raise StoreUnavailable(problems[0])
            entry = self._registry.directory.tenants.get(pool.tenant)
            if entry is None:
                raise StoreError(f"tenant {pool.tenant!r} is not in the registry")
            plan_name = entry.tenant.plan
        if plan_name is None:
            return None
        plan = self._plans().get(plan_name)
        if plan is None:
            raise StoreError(f"plan {plan_name!r} is not configured")
        return plan.max_instances
