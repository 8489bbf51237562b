"""Helpers that call the limiter scripts directly on an engine and read their replies by field name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tollgate.limiter.store import ScriptEngine

__all__ = ["Lim", "Result", "admit", "extend", "peek", "release", "renew", "settle"]


@dataclass(frozen=True)
class Lim:
    """One limit's slice of KEYS/ARGV for admit.lua / peek.lua."""

    key: str
    kind: str
    limit: int
    window_ms: int
    cost: int = 1
    param: str = ""
    shadow: bool = False

    def args(self) -> list[Any]:
        return [self.kind, self.limit, self.window_ms, self.cost, self.param, "1" if self.shadow else "0"]


@dataclass(frozen=True)
class Result:
    allowed: bool
    limit: int
    remaining: int
    reset_ms: int
    retry_ms: int
    mark: int
    used: int = -1  # peek.lua only: units counted now, past the limit after an overdraft


@dataclass(frozen=True)
class Reply:
    admitted: bool
    now_us: int
    limits: list[Result]

    def __getitem__(self, i: int) -> Result:
        return self.limits[i]


def _parse(raw: list[int], limits: tuple[Lim, ...], stride: int = 5) -> Reply:
    """admit.lua's (stride 5) or peek.lua's (stride 6) reply; the scripts do not echo the limit, the call sent it."""
    assert len(raw) == 2 + stride * len(limits), raw
    rows = [
        Result(bool(raw[j]), lim.limit, *raw[j + 1 : j + stride]) for lim, j in zip(limits, range(2, len(raw), stride))
    ]
    return Reply(bool(raw[0]), raw[1], rows)


async def admit(engine: ScriptEngine, *limits: Lim) -> Reply:
    args: list[Any] = []
    for lim in limits:
        args += lim.args()
    return _parse(await engine.run("admit", [lim.key for lim in limits], args), limits)


async def peek(engine: ScriptEngine, *limits: Lim) -> Reply:
    args: list[Any] = []
    for lim in limits:
        args += lim.args()
    return _parse(await engine.run("peek", [lim.key for lim in limits], args), limits, stride=6)


async def settle(engine: ScriptEngine, lim: Lim, delta: int, mark: int) -> tuple[int, ...]:
    """(applied, overdraft, remaining, reset_ms) of settle.lua for one limit; (applied,) for a concurrency limit."""
    raw = await engine.run("settle", [lim.key], [lim.kind, lim.limit, lim.window_ms, delta, lim.param, mark])
    return tuple(raw[1:])


async def extend(engine: ScriptEngine, *wants: tuple[Lim, int, int]) -> list[tuple[int, int, int]]:
    """(granted, remaining, mark) of extend.lua per (limit, want, need)."""
    args: list[Any] = []
    for lim, want, need in wants:
        args += [lim.kind, lim.limit, lim.window_ms, want, lim.param, need]
    raw = await engine.run("extend", [lim.key for lim, _, _ in wants], args)
    return [tuple(raw[j : j + 3]) for j in range(1, len(raw), 3)]  # type: ignore[misc]


async def renew(engine: ScriptEngine, key: str, lease_id: str, ttl_ms: int) -> int:
    return (await engine.run("lease_renew", [key], [ttl_ms, lease_id]))[0]


async def release(engine: ScriptEngine, key: str, lease_id: str) -> int:
    return (await engine.run("lease_release", [key], [lease_id]))[0]
