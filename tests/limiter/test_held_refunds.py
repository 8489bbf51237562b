"""settle.lua holds back a sliding window's refunds into one slot and writes them together (lua/sliding_window.lua):
one call settling many charges must answer and leave the keys exactly as one call per charge would."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.errors import StoreError
from tollgate.limiter.store import EmbeddedEngine

from .conftest import Store
from .scriptcalls import Lim, admit, peek

MINUTE = 60_000
SW_A = Lim("{t}:sw2.a", "sliding_window", 1_000, MINUTE, param="20")
SW_B = Lim("{t}:sw2.b", "sliding_window", 300, 10_000, param="5")
CC = Lim("{t}:cc", "concurrency", 50, MINUTE)
FW = Lim("{t}:fw", "fixed_window", 5_000, MINUTE)


def settle_argv(charges: list[tuple[Lim, int, Any]]) -> tuple[list[str], list[Any]]:
    """settle.lua's packed KEYS and ARGV for (limit, delta, mark or lease id) charges."""
    keys, args = [], []
    for lim, delta, mark in charges:
        param = "" if lim.kind == "concurrency" else lim.param
        keys.append(lim.key)
        args += [f"{lim.kind} {lim.limit} {lim.window_ms} {param}", delta, mark]
    return keys, args


def fields(reply: list[int], charges: list[tuple[Lim, int, Any]]) -> list[tuple[int, ...]]:
    out, j = [], 1
    for lim, _, _ in charges:
        width = 1 if lim.kind == "concurrency" else 4
        out.append(tuple(reply[j : j + width]))
        j += width
    assert j == len(reply)
    return out


def state(engine: EmbeddedEngine) -> dict[str, Any]:
    ks = engine.keyspace
    out: dict[str, Any] = {}
    for key in sorted(ks.keys()):
        kind = "zset" if key.endswith(":cc") else "hash"
        raw = ks.call("ZRANGE", key, "0", "-1", "WITHSCORES") if kind == "zset" else ks.call("HGETALL", key)
        items = list(raw.values()) if isinstance(raw, dict) else list(raw)
        out[key] = (sorted(zip(items[::2], items[1::2])), ks.ttl_ms(key))
    return out


@pytest.mark.parametrize("seed", range(40))
async def test_one_call_settles_a_batch_exactly_as_one_call_per_charge(seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    one_by_one, batched = EmbeddedEngine(clock), EmbeddedEngine(clock)
    held: list[tuple[Lim, int, Any]] = []  # charges admitted and not settled yet: (limit, cost, mark or lease id)
    for _ in range(6):
        for _ in range(rng.randint(1, 8)):  # admissions, the same on both engines
            lims = [dataclasses.replace(SW_A, cost=rng.randint(1, 60))]
            if rng.random() < 0.5:
                lims.append(dataclasses.replace(SW_B, cost=rng.randint(1, 30)))
            lims += [CC, FW]
            lease = f"lease{rng.getrandbits(32)}"
            lims = [dataclasses.replace(lim, param=lease) if lim.kind == "concurrency" else lim for lim in lims]
            flat = [v for lim in lims for v in lim.args()]
            replies = [await e.run("admit", [lim.key for lim in lims], flat) for e in (one_by_one, batched)]
            assert replies[0] == replies[1]
            if replies[0][0] == 1:
                for n, lim in enumerate(lims):
                    mark = lease if lim.kind == "concurrency" else replies[0][2 + 5 * n + 4]
                    held.append((lim, lim.cost, mark))
            clock.advance(rng.choice([0, 0.2, 1.5, 3.1, 9]))
        rng.shuffle(held)
        batch, held = held[: rng.randint(1, len(held) or 1)], held[len(held) // 2 :]
        charges: list[tuple[Lim, int, Any]] = []
        for lim, cost, mark in batch:
            if lim.kind == "concurrency":
                charges.append((lim, -1, mark))
            else:  # mostly refunds that leave the slot units, some that empty it, some more, some charges
                delta = rng.choice([-1, -2, -(cost // 2), -cost, -cost - 5, 0, 3, rng.randint(1, 40)])
                charges.append((lim, delta, mark))
        if rng.random() < 0.3:
            charges.append(charges[0])  # the same charge twice: a release already done, a refund on less
        singles = []
        for charge in charges:
            keys, args = settle_argv([charge])
            singles += fields(await one_by_one.run("settle", keys, args), [charge])
        keys, args = settle_argv(charges)
        assert fields(await batched.run("settle", keys, args), charges) == singles
        assert state(batched) == state(one_by_one)
        clock.advance(rng.choice([0, 0.5, 2.9, 20]))


async def test_a_batch_of_refunds_into_one_slot_answers_each_and_leaves_their_sum(store: Store) -> None:
    lim = Lim("{t}:sw2.r", "sliding_window", 100, MINUTE, cost=10, param="20")
    cc = Lim("{t}:cc.r", "concurrency", 10, MINUTE)
    marks = []
    for n in range(5):
        reply = await admit(store.engine, lim, dataclasses.replace(cc, param=f"l{n}"))
        marks.append(reply[0].mark)
    assert len(set(marks)) <= 2  # one slot, or two when the calls straddled a slot's edge
    charges = [(lim, -3, marks[0]), (cc, -1, "l0"), (lim, -4, marks[1]), (lim, -10, marks[2]), (lim, 2, marks[3])]
    keys, args = settle_argv(charges)
    got = fields(await store.engine.run("settle", keys, args), charges)
    assert [g[:3] for g in got] == [(-3, 0, 53), (-1,), (-4, 0, 57), (-10, 0, 67), (2, 0, 65)]
    assert (await peek(store.engine, lim))[0].used == 35


async def test_refunds_held_back_are_written_when_a_later_charge_of_the_call_fails(store: Store) -> None:
    lim = Lim("{t}:sw2.e", "sliding_window", 100, MINUTE, cost=10, param="20")
    mark = (await admit(store.engine, lim))[0].mark
    keys, args = settle_argv([(lim, -3, mark)])
    with pytest.raises(StoreError, match="malformed packed limit"):
        await store.engine.run("settle", [*keys, lim.key], [*args, "nonsense 1 2 ", -1, "0"])
    assert (await peek(store.engine, lim))[0].used == 7
    # and the next call starts from the key as written, nothing left held from the failed one
    await store.engine.run("settle", keys, args)
    assert (await peek(store.engine, lim))[0].used == 4
