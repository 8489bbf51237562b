"""Randomized parity: sequences of (time, cost, limit) run on Redis, then replayed on the embedded engine at the
same microseconds; every field of every reply must match."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.support.redis import RedisServer
from tollgate.clock import ManualClock, SystemClock
from tollgate.limiter.store import EmbeddedEngine, RedisEngine

KINDS = ("sliding_window", "gcra", "fixed_window", "concurrency")


def random_limits(rng: random.Random) -> list[dict[str, Any]]:
    """One limit per kind, with small windows so that time matters within a sequence."""
    out = []
    for n, kind in enumerate(KINDS):
        window = rng.choice([20, 50, 120, 300, 1000])
        if kind == "fixed_window":
            param = rng.choice(["", "", "minute"])
        elif kind == "sliding_window":
            param = str(rng.choice([1, 2, 4, 10]))
        else:
            param = ""
        out.append({"key": f"{{r}}:{n}", "kind": kind, "limit": rng.randint(1, 12), "window": window, "param": param})
    return out


def random_call(
    rng: random.Random, limits: list[dict[str, Any]], marks: dict[str, int], step: int
) -> tuple[str, list[str], list[Any]]:
    roll = rng.random()
    chosen = rng.sample(limits, rng.randint(1, len(limits)))
    if roll < 0.15 and marks:
        keys, args = [], []
        for lim in chosen:
            if lim["kind"] == "concurrency" or lim["key"] not in marks:
                continue
            keys.append(lim["key"])
            args += [lim["kind"], lim["limit"], lim["window"], rng.randint(-6, 6), lim["param"], marks[lim["key"]]]
        if keys:
            return "settle", keys, args
    script = "peek" if roll > 0.9 else "admit"
    keys, args = [], []
    for lim in chosen:
        limit = max(0, lim["limit"] + rng.choice([0, 0, 0, -1, 1]))  # a limit may change between calls
        if lim["kind"] == "concurrency":
            cost, param = rng.choice([0, 1, 1, 1]), f"lease-{step}"
        else:
            cost, param = rng.choice([0, 1, 1, 2, 3, limit, limit + 1]), lim["param"]
        keys.append(lim["key"])
        args += [lim["kind"], limit, lim["window"], cost, param, rng.choice(["0", "0", "0", "1"])]
    return script, keys, args


def now_of(script: str, reply: list[int]) -> int:
    return reply[0] if script == "settle" else reply[1]


@pytest.mark.parametrize("seed", range(16))
async def test_embedded_replays_random_sequences_exactly_like_redis(redis_standalone: RedisServer, seed: int) -> None:
    redis_standalone.flushall()
    rng = random.Random(seed)
    limits = random_limits(rng)
    redis = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, coalesce=False)
    recorded: list[tuple[str, list[str], list[Any], list[int]]] = []
    marks: dict[str, int] = {}
    try:
        for step in range(40):
            if rng.random() < 0.5:
                await asyncio.sleep(rng.choice([0.001, 0.005, 0.015, 0.04]))
            script, keys, args = random_call(rng, limits, marks, step)
            reply = await redis.run(script, keys, args)
            recorded.append((script, keys, args, reply))
            if script == "admit":
                for i, key in enumerate(keys):
                    marks[key] = reply[2 + i * 5 + 4]
    finally:
        await redis.close()

    clock = ManualClock()
    embedded = EmbeddedEngine(clock)
    for n, (script, keys, args, expected) in enumerate(recorded):
        clock.set_wall_ns(now_of(script, expected) * 1000)
        got = await embedded.run(script, keys, args)
        assert got == expected, f"step {n}: {script} {keys} {args}"
    assert any(r[0] == "admit" and r[3][0] == 0 for r in recorded)  # refusals were exercised
    assert any(r[0] == "admit" and r[3][0] == 1 for r in recorded)
