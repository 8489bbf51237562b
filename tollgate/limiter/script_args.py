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
    "joined_limits",
    "limit_args",
    "limit_state",
    "packed_limit",
    "param",
    "peek_args",
    "settle_args",
    "settle_limit",
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


def packed_limit(s: LimitSpec) -> str:
    """One limit as admit.lua's packed ARGV: "kind limit window_ms cost param shadow", a concurrency limit's param
    empty (the call's lease id is its last ARGV). Each value is one argument less for Redis to read and hand to Lua,
    and the string, the same request after request, is parsed once by the script."""
    p = "" if s.kind == "concurrency" else param(s, "")
    return f"{s.kind} {s.limit} {s.window_ms} {s.cost} {p} {'1' if s.shadow else '0'}"


def settle_limit(s: LimitSpec) -> str:
    """A limit's first of settle.lua's 3 packed ARGV: "kind limit window_ms param", a concurrency limit's param
    empty (its lease id takes the mark's place)."""
    return f"{s.kind} {s.limit} {s.window_ms} {'' if s.kind == 'concurrency' else param(s, '')}"


def settle_args(spec: LimitSpec, delta: int, mark: int, lease_id: str) -> tuple[Any, ...]:
    """One charge's 3 packed ARGV of settle.lua: the limit, delta, and the mark or (concurrency) the lease id."""
    return (settle_limit(spec), delta, lease_id if spec.kind == "concurrency" else mark)


def joined_limits(packed: Sequence[str]) -> str:
    """Packed limits as admit.lua's first joined ARGV: one string, parsed once by the script for every request
    that sends it (one argument for Redis to read and hand to Lua instead of one per limit)."""
    return ";".join(packed)


def admit_args(specs: Sequence[LimitSpec], lease_id: str) -> list[Any]:
    """admit.lua's joined ARGV: the limits packed and joined, then the lease id."""
    return [joined_limits([packed_limit(s) for s in specs]), lease_id]


def peek_args(specs: Sequence[LimitSpec]) -> list[Any]:
    """peek.lua's 6 ARGV per limit."""
    args: list[Any] = []
    for s in specs:
        args += limit_args(s, "")
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
