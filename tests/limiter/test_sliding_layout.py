"""The sliding window's hash keeps its total and its lowest and highest slot beside the slots (lua/sliding_window.lua):
its replies must be exactly those of the plain layout it replaced, which summed every slot on every call.

A model of that plain layout (a slot -> units map, every slot read each time) runs beside the embedded engine through
random sequences of admissions, peeks, extensions, charges and refunds, with time jumping by less and more than a
slot, so that slots stop counting, stale slots are swept, and refunds empty the lowest, the highest and the last slot.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.limiter.store import EmbeddedEngine

START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
KEY = "{t}:sw2"


class PlainWindow:
    """The plain layout's semantics: every slot ever charged, counted while it is within the window."""

    def __init__(self, limit: int, window_ms: int, slots: int) -> None:
        self.limit, self.window_ms = limit, window_ms
        self.slot_ms = max(1, math.ceil(window_ms / slots))
        self.units: dict[int, int] = {}

    def _geometry(self, now_us: int) -> tuple[int, int, int]:
        now_ms = now_us // 1000
        return now_ms, now_ms // self.slot_ms, (now_ms - self.window_ms) // self.slot_ms

    def _left(self, idx: int, now_ms: int) -> int:
        return max(0, (idx + 1) * self.slot_ms + self.window_ms - now_ms)

    def _counted(self, oldest: int) -> list[tuple[int, int]]:
        return sorted((i, u) for i, u in self.units.items() if i >= oldest and u)

    def check(self, now_us: int, cost: int) -> tuple[bool, int, int, int, int, int]:
        """(allowed, remaining, reset_ms, retry_ms, mark, used), as sliding_window.lua's check reports them."""
        now_ms, cur, oldest = self._geometry(now_us)
        live = self._counted(oldest)
        total = sum(u for _, u in live)
        retry = 0
        if cost > self.limit:
            allowed, remaining, retry = False, max(0, self.limit - total), -1
        elif total + cost <= self.limit:
            allowed, remaining = True, self.limit - total - cost
        else:
            allowed, remaining = False, max(0, self.limit - total)
            freed = 0
            for idx, units in live:
                freed += units
                if freed >= total + cost - self.limit:
                    retry = self._left(idx, now_ms)
                    break
        if allowed and cost > 0:
            reset = self._left(cur, now_ms)
        else:
            reset = self._left(live[-1][0], now_ms) if live else 0
        return allowed, remaining, reset, retry, cur, total

    def charge(self, now_us: int, units: int) -> None:
        cur = self._geometry(now_us)[1]
        self.units[cur] = self.units.get(cur, 0) + units

    def adjust(self, now_us: int, delta: int, mark: int) -> list[int]:
        """(applied, overdraft, remaining, reset_ms), as settle.lua reports them."""
        now_ms, _, oldest = self._geometry(now_us)
        applied = 0
        if delta > 0:
            self.charge(now_us, delta)
            applied = delta
        elif delta < 0 and mark >= oldest:
            back = min(self.units.get(mark, 0), -delta)
            if back > 0:
                self.units[mark] -= back
                applied = -back
        live = self._counted(oldest)
        total = sum(u for _, u in live)
        reset = self._left(live[-1][0], now_ms) if live else 0
        return [applied, max(0, total - self.limit), max(0, self.limit - total), reset]


def assert_layout(engine: EmbeddedEngine, model: PlainWindow, now_us: int, where: str) -> None:
    """The hash's own fields agree with its slots: n the highest, o none above the lowest, and t their sum while o
    still counts (what a read trusts: lua/sliding_window.lua, whose admissions consume with HINCRBY of t, then of the
    slot, once the key was seen so); a key with no slot is gone, a key with slots has a TTL."""
    ks = engine.keyspace
    live = ks.keys()  # a Keyspace, not a dict: keys() lists the live keys
    if KEY not in live:
        return
    raw = ks.call("HGETALL", KEY)
    fields = dict(raw) if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2]))
    slots = {int(k): int(v) for k, v in fields.items() if k not in ("t", "o", "n")}
    assert slots and all(v > 0 for v in slots.values()), (where, fields)
    assert int(fields["n"]) == max(slots) and int(fields["o"]) <= min(slots), (where, fields)
    oldest = (now_us // 1000 - model.window_ms) // model.slot_ms
    if int(fields["o"]) >= oldest:
        assert int(fields["t"]) == sum(slots.values()), (where, fields)
    assert ks.ttl_ms(KEY) > 0, where


def args(w: PlainWindow, cost: int, slots: int, last: Any) -> list[Any]:
    return ["sliding_window", w.limit, w.window_ms, cost, str(slots), last]


@pytest.mark.parametrize("seed", range(40))
async def test_the_sliding_window_answers_exactly_as_the_plain_layout_did(seed: int) -> None:
    rng = random.Random(seed)
    slots = rng.choice([1, 2, 3, 4, 10, 20])
    window_ms = rng.choice([40, 100, 300, 1000])
    model = PlainWindow(rng.randint(1, 30), window_ms, slots)
    clock = ManualClock()
    clock.set_wall_ns(START_US * 1000)
    engine = EmbeddedEngine(clock)
    marks: list[int] = []
    for step in range(120):
        clock.advance(rng.choice([0, 0, 0.001, 0.003, model.slot_ms / 2000, model.slot_ms / 1000, window_ms / 1000]))
        roll = rng.random()
        where = f"seed {seed} step {step}"
        if roll < 0.35 and marks:
            delta = rng.choice([-1, -2, -5, -30, 1, 3]) if rng.random() < 0.8 else 0
            mark = rng.choice(marks)
            reply = await engine.run("settle", [KEY], args(model, delta, slots, mark))
            assert reply[1:] == model.adjust(reply[0], delta, mark), where
        elif roll < 0.45:
            want = rng.randint(1, model.limit + 2)
            need = rng.randint(1, want)
            reply = await engine.run("extend", [KEY], args(model, want, slots, need))
            now_us = reply[0]
            allowed, remaining, _, _, mark, _ = model.check(now_us, want)
            left = remaining + want if allowed else remaining
            take = min(want, max(need, left // 8), left)
            granted = 0
            if take == want and allowed:
                granted = want
            elif take >= need and take > 0:
                allowed, remaining, _, _, mark, _ = model.check(now_us, take)
                granted = take if allowed else 0
            if granted:
                model.charge(now_us, granted)
                marks.append(mark)
            assert reply[1:] == [granted, remaining, mark], where
        else:
            script = "peek" if roll > 0.9 else "admit"
            cost = rng.choice([0, 1, 1, 2, 3, model.limit, model.limit + 1])
            reply = await engine.run(script, [KEY], args(model, cost, slots, "0"))
            now_us = reply[1]
            allowed, remaining, reset, retry, mark, used = model.check(now_us, 0 if script == "peek" else cost)
            expected = [int(allowed), remaining, reset, retry, mark]
            if script == "peek":
                assert reply[2:] == [*expected, used], where
                continue
            assert reply == [int(allowed), now_us, *expected], where
            if allowed and cost > 0:
                model.charge(now_us, cost)
                marks.append(mark)
        assert_layout(engine, model, clock.time_ns() // 1000, where)
    await engine.close()
