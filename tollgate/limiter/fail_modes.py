"""Fail modes: what a limit answers when its store fails: ``fail_open``, ``fail_closed``, or ``local``.

``local`` asks the embedded engine instead, with the limit divided among the
gateway's instances; the limits of one failed call that fall back locally go
in one call together.
"""

from __future__ import annotations

import dataclasses

from tollgate.limiter.base import LOCAL_STORE
from tollgate.limiter.decision import Charge, LimitState
from tollgate.limiter.script_args import ADMIT_STRIDE, EXTEND_STRIDE, ExtendItem, admit_args, extend_args, limit_state
from tollgate.limiter.slot_groups import Item, Outcome
from tollgate.limiter.spec import LimitSpec
from tollgate.limiter.unsettled import UnsettledMixin

__all__ = ["FAIL_CLOSED_RETRY_MS", "FailModeMixin", "answered", "divided"]

FAIL_CLOSED_RETRY_MS = 1000  # what a fail_closed refusal tells the client to wait


def divided(spec: LimitSpec, instances: int) -> LimitSpec:
    """The share of a limit one of ``instances`` gateway processes enforces alone."""
    if instances <= 1 or spec.limit == 0:
        return spec
    return dataclasses.replace(spec, limit=max(1, spec.limit // instances))


def answered(spec: LimitSpec, allowed: bool) -> LimitState:
    """A fail mode's answer for one limit: ``fail_open`` lets it through with all of it left, ``fail_closed``
    refuses it for ``FAIL_CLOSED_RETRY_MS``."""
    wait = 0 if allowed else FAIL_CLOSED_RETRY_MS
    remaining = spec.limit if allowed else 0
    return LimitState(spec.name, spec.kind, spec.unit, allowed, spec.limit, remaining, wait, wait, spec.shadow, True)


class FailModeMixin(UnsettledMixin):
    """The answers of admission and extension when a store fails."""

    async def _fail_group(self, store: str, group: list[Item], lease_id: str) -> Outcome:
        """The store failed: each limit's fail mode answers, ``local`` ones on the embedded engine together."""
        states: list[tuple[int, LimitState]] = []
        local: list[Item] = []
        refused = False
        for it in group:
            spec = it.spec
            if spec.fail_mode == "local" and self._local is not None:
                local.append(it)
            elif spec.fail_mode == "fail_closed" and not spec.shadow:
                refused = True
                states.append((it.position, answered(spec, False)))
            else:  # fail_open, or a shadow limit, or no embedded engine to fall back on
                states.append((it.position, answered(spec, True)))
        if refused or not local:  # a fail_closed refusal: the local limits are not even consumed
            return Outcome(not refused, states, [], True)
        assert self._local is not None
        specs = [divided(it.spec, self._instances) for it in local]
        keys = [f"{it.key}@{store}" for it in local]
        reply = await self._local.run("admit", keys, admit_args(specs, lease_id))
        admitted = reply[0] == 1
        charges = []
        for n, (it, spec) in enumerate(zip(local, specs)):
            j = 2 + n * ADMIT_STRIDE
            states.append((it.position, limit_state(spec, reply, j, degraded=True)))
            if admitted and spec.cost > 0:
                charges.append(Charge(LOCAL_STORE, keys[n], it.tag, spec, reply[j + 4], lease_id))
        return Outcome(admitted, states, charges, True)

    async def _fail_extend(self, store: str, group: list[ExtendItem], granted: list[int]) -> list[Charge]:
        """The store failed during an extension: ``fail_open`` grants unchecked, ``fail_closed`` nothing, and
        ``local`` limits ask the embedded engine; returns the local charges."""
        local = []
        for it in group:
            i, spec, _, _, want, _ = it
            if spec.fail_mode == "local" and self._local is not None:
                local.append(it)
            elif spec.fail_mode != "fail_closed":
                granted[i] = want  # fail_open: unchecked, as an admission would be
        if not local:
            return []
        assert self._local is not None
        shares = [
            (i, divided(spec, self._instances), f"{key}@{store}", tag, want, need)
            for i, spec, key, tag, want, need in local
        ]
        reply = await self._local.run("extend", [it[2] for it in shares], extend_args(shares))
        charges = []
        for n, (i, spec, key, tag, _, _) in enumerate(shares):
            j = 1 + n * EXTEND_STRIDE
            if reply[j] > 0:
                granted[i] = reply[j]
                charges.append(Charge(LOCAL_STORE, key, tag, spec.with_cost(reply[j]), reply[j + 2]))
        return charges
