"""The scripts' arguments and replies on the limiter's side: a limit as ARGV of admit, peek, extend, settle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tollgate.limiter.decision import LimitState
from tollgate.limiter.spec import LimitSpec

__all__ = [
    "ADMIT_STRIDE",
    "EXTEND_STRIDE",
    "PEEK_STRIDE",
    "SETTLE_STRIDE",
    "ExtendItem",
    "admit_args",
    "extend_args",
    "limit_args",
    "limit_state",
    "param",
]

ADMIT_STRIDE = 5  # fields per limit in admit.lua's replies (peek.lua's add a 6th, used)
PEEK_STRIDE = 6
SETTLE_STRIDE = 4  # fields per limit in settle.lua's reply; 1 for a concurrency limit (what it released)
EXTEND_STRIDE = 3  # fields per limit in extend.lua's reply
# One limit a running request asks more of: (its position, spec, key, hash tag, want, need).
ExtendItem = tuple[int, LimitSpec, str, str, int, int]


def param(spec: LimitSpec, lease_id: str) -> str:
    """A limit's 5th ARGV: slots, calendar, lease id, or the longest wait (shaping), by kind."""
    kind = spec.kind
    if kind == "sliding_window":
        return str(spec.slots)
    if kind == "fixed_window":
        return spec.calendar or ""
    if kind == "concurrency":
        return lease_id
    if kind == "shaping":
        return str(spec.max_delay_ms)
    return ""


def limit_args(s: LimitSpec, lease_id: str) -> tuple[Any, ...]:
    """One limit's 6 ARGV of admit.lua / peek.lua."""
    return (s.kind, s.limit, s.window_ms, s.cost, param(s, lease_id), "1" if s.shadow else "0")


def admit_args(specs: Sequence[LimitSpec], lease_id: str) -> list[Any]:
    args: list[Any] = []
    for s in specs:
        args += limit_args(s, lease_id)
    return args


_new = tuple.__new__


def limit_state(spec: LimitSpec, reply: Sequence[int], j: int, *, degraded: bool = False) -> LimitState:
    """The state of one limit from admit.lua's or peek.lua's reply, whose fields for it start at ``j``
    (the scripts do not echo the limit: it is the spec's, as sent)."""
    # a named tuple from one tuple, without a Python-level constructor (one per limit per request)
    return _new(
        LimitState,
        (
            spec.name,
            spec.kind,
            spec.unit,
            reply[j] == 1,
            spec.limit,
            reply[j + 1],
            reply[j + 2],
            reply[j + 3],
            spec.shadow,
            degraded,
        ),
    )


def extend_args(group: Sequence[ExtendItem]) -> list[Any]:
    """extend.lua's 6 ARGV per limit: kind, limit, window, want, param, need."""
    args: list[Any] = []
    for _, spec, _, _, want, need in group:
        args += (spec.kind, spec.limit, spec.window_ms, want, param(spec, ""), max(1, min(need, want)))
    return args
