"""A call the embedded engine registered in Lua (a KEYS tuple seen again with the same ARGV but the last) answers
exactly what the same call handed over whole answers: the same replies, and the same keys left behind."""

from __future__ import annotations

import random
from typing import Any

import lupa
import pytest

from tollgate.clock import ManualClock
from tollgate.limiter.store import EmbeddedEngine
from tollgate.limiter.store import embedded as embedded_module
from tollgate.limiter.store import keyspace as keyspace_module

NOW_NS = 1_700_000_000_123_456_789
KEYS = ("t:{a}:sw2.rpm", "t:{a}:sw2.tpm", "t:{a}:cc", "t:{a}:fw", "t:{a}:gcra")
LIMITS = [
    "sliding_window 50 60000 1 20 0",
    "sliding_window 1000 60000 40 20 0",
    "concurrency 30 60000 1  0",
    "fixed_window 100 60000 1 month 0",
    "gcra 40 60000 1  0",
]


def _calls(seed: int) -> list[tuple[tuple[str, ...], list[Any]]]:
    """Admissions over a few KEYS tuples (each one object, as a layout hands it over), their limits sometimes
    changing under the same tuple (another cost), and integer arguments among the texts."""
    rng = random.Random(seed)
    tuples = [KEYS, KEYS[:3], KEYS[1:], (KEYS[0],)]
    calls = []
    for i in range(120):
        keys = rng.choice(tuples)
        first = 0 if keys is KEYS or keys == KEYS[:3] or keys == (KEYS[0],) else 1
        limits = LIMITS[first : first + len(keys)]
        if rng.random() < 0.2:  # the same KEYS tuple with another cost: a new registration, never the old one
            limits = [lim.replace(" 40 20 0", f" {rng.randint(1, 90)} 20 0") for lim in limits]
        last: Any = f"lease{i}" if any(lim.startswith("concurrency") for lim in limits) else ""
        calls.append((keys, [*limits, last]))
    return calls


def _run(engine: EmbeddedEngine, clock: ManualClock, calls: list[tuple[tuple[str, ...], list[Any]]], whole: bool):
    replies = []
    for keys, args in calls:
        # a list of KEYS is never registered: every call handed over whole
        replies.append(engine.run_sync("admit", list(keys) if whole else keys, args))
        clock.advance(0.7)
    ks = engine.keyspace
    return replies, {key: ks.ttl_ms(key) for key in sorted(ks.keys())}


def _pair(seed: int) -> tuple[Any, Any, EmbeddedEngine]:
    calls = _calls(seed)
    whole_clock, registered_clock = ManualClock(wall_ns=NOW_NS), ManualClock(wall_ns=NOW_NS)
    registered = EmbeddedEngine(registered_clock)
    expected = _run(EmbeddedEngine(whole_clock), whole_clock, calls, whole=True)
    got = _run(registered, registered_clock, calls, whole=False)
    return expected, got, registered


@pytest.mark.parametrize("seed", range(6))
def test_registered_calls_answer_as_calls_handed_over_whole(seed: int) -> None:
    expected, got, engine = _pair(seed)
    assert got == expected
    assert any(r[0] == 0 for r in expected[0])  # refusals are among them
    assert engine._registered > 0  # and the registered path did run


def test_past_the_bound_registrations_start_again_and_answer_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_module, "REPEATED_LIMIT", 2)
    expected, got, engine = _pair(7)
    assert got == expected
    assert len(engine._repeated) <= 2 and engine._registered <= 4


def test_registered_calls_answer_the_same_on_lua_5_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without LuaJIT (no table.new) the registered path copies KEYS and ARGV the same way."""
    expected, _, _ = _pair(3)
    monkeypatch.setattr(keyspace_module, "_lua", lupa.lua51)
    _, got, engine = _pair(3)
    assert engine.keyspace.lua.eval("jit") is None
    assert got == expected


def test_an_integer_last_argument_is_handed_over_as_redis_formats_it() -> None:
    from tollgate.limiter.store import Script

    body = "return {#KEYS, #ARGV, tonumber(ARGV[#ARGV]) * 2, string.len(ARGV[#ARGV])}"
    engine = EmbeddedEngine(ManualClock(), scripts={"probe": Script("probe", body, "", "", body)})
    keys = ("a", "b")
    for _ in range(3):  # handed over whole, then registered, then registered again
        assert engine.run_sync("probe", keys, ["x", 12345]) == [2, 2, 24690, 5]
    assert engine._registered == 1
