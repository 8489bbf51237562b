"""What one admit.lua call learns of a key from its own writes (lua/concurrency.lua's CC_NOW, sliding_window.lua's
SW_NOW, fixed_window.lua's FW_NOW): the admissions of a batch after the first into a key read and write it in memory,
and the key is written once when the call ends. Each admission must be answered, and every key left, exactly as by
one call per admission: with limits that repeat within an admission, lease ids already held, expired leases, keys
deleted between calls, refusals that give back what was taken, and a failing admission in the middle."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.limiter.test_admission_batch import batch_argv, packed, state
from tests.support.redis import RedisServer
from tollgate.clock import ManualClock, SystemClock
from tollgate.errors import StoreError
from tollgate.limiter.store import EmbeddedEngine, RedisEngine
from tollgate.limiter.store.engine import ScriptCall
from tollgate.limiter.store.scripts import Script, load_scripts, lua_dir

MINUTE = 60_000
# (key, kind, limit, window_ms, param): small limits, so that batches meet refusals and undone takes.
LIMITS = [
    ("{t}:sw2.a", "sliding_window", 30, MINUTE, "20"),
    ("{t}:sw2.b", "sliding_window", 12, 2_000, "4"),
    ("{t}:fw.a", "fixed_window", 25, MINUTE, "minute"),
    ("{t}:fw.b", "fixed_window", 9, 3_000, ""),
    ("{t}:cc.a", "concurrency", 7, MINUTE, ""),
    ("{t}:cc.b", "concurrency", 4, 1_500, ""),
]


def scripts_without_memos(tmp: Path) -> Mapping[str, Script]:
    """The scripts with every call's memo off (common.lua's CALL.memo): each admission reads and writes its keys with
    commands of its own, as before the memos."""
    for f in lua_dir().iterdir():
        if f.name.endswith(".lua"):
            (tmp / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    common = (tmp / "common.lua").read_text(encoding="utf-8")
    assert "local CALL = { n = 0, memo = true, batch = false }" in common
    (tmp / "common.lua").write_text(common.replace("memo = true,", "memo = false,"), encoding="utf-8")
    return load_scripts(tmp)


def random_admission(rng: random.Random, leases: list[str]) -> tuple[list[str], list[Any]]:
    """One admission: limits drawn with repeats (a key twice in one admission), costs that sometimes exceed the
    limit, some in shadow mode; its lease id sometimes one already held."""
    chosen = rng.choices(LIMITS, k=rng.randint(1, 5))
    keys, args = [], []
    for key, kind, limit, window_ms, param in chosen:
        cost = 1 if kind == "concurrency" else rng.choice([0, 1, 1, 1, 2, 3, limit + 1])
        keys.append(key)
        args.append(packed(kind, limit, window_ms, cost, param, rng.random() < 0.1))
    lease = rng.choice(leases) if leases and rng.random() < 0.1 else f"{rng.getrandbits(32):08x}"
    args.append(lease)
    return keys, args


@pytest.mark.parametrize("seed", range(40))
async def test_a_batch_of_admissions_into_the_same_keys_answers_and_writes_as_one_call_each(
    seed: int, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    # one call per admission, every command its own (no memo), against the batch with memos
    one_by_one, batched = EmbeddedEngine(clock, scripts=scripts_without_memos(tmp_path)), EmbeddedEngine(clock)
    leases: list[str] = []
    for _ in range(15):
        admissions = [random_admission(rng, leases) for _ in range(rng.randint(1, 16))]
        failing = rng.random() < 0.2
        if failing:  # an admission that fails (a limit that does not parse) among the others
            admissions.insert(rng.randint(0, len(admissions)), (["{t}:fw.a"], ["fixed_window 5 nonsense", ""]))
        singles = []
        for keys, args in admissions:
            try:
                singles.append(await one_by_one.run("admit", keys, args))
            except StoreError:
                singles.append(None)
        keys, args = batch_argv(admissions)
        if failing:  # the embedded engine raises a batch's error reply; the others were applied all the same
            with pytest.raises(StoreError, match="malformed packed limit"):
                await batched.run("admit", keys, args)
        else:
            assert await batched.run("admit", keys, args) == singles
        assert state(batched) == state(one_by_one)
        leases += [a[-1] for _, a in admissions if a[-1]]
        for key in rng.sample([k for k, *_ in LIMITS], rng.randint(0, 2)):  # evicted, flushed or reset by an admin
            if rng.random() < 0.3:
                for engine in (one_by_one, batched):
                    engine.keyspace.call("DEL", key)
        for lease in rng.sample(leases, min(len(leases), rng.randint(0, 6))):  # requests that end
            for engine in (one_by_one, batched):
                for key in ("{t}:cc.a", "{t}:cc.b"):
                    await engine.run("settle", [key], [f"concurrency 1 {MINUTE} ", -1, lease])
        clock.advance(rng.choice([0, 0, 0.3, 0.9, 1.6, 4, 61]))


def _admit(keys: list[str], args: list[Any]) -> ScriptCall:
    return ScriptCall("admit", keys, args)


@pytest.mark.process
async def test_a_batch_on_redis_reads_a_lease_set_once_and_writes_each_window_once(
    redis_standalone: RedisServer,
) -> None:
    """16 admissions into the same five keys in one FCALL: each lease set read once (the first admission), each
    window's HINCRBY answered once and the rest written by one HSET; every count exact, the last admission refused
    and given back."""
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    admin = redis_standalone.client()
    try:
        await engine.start()
        keys = ["{t}:sw2.a", "{t}:sw2.b", "{t}:fw.a", "{t}:cc.a", "{t}:cc.b"]
        limits = ";".join(
            [
                packed("sliding_window", 100, MINUTE, 2, "20", False),
                packed("sliding_window", 100, MINUTE, 3, "20", False),
                packed("fixed_window", 100, MINUTE, 1, "minute", False),
                packed("concurrency", 15, MINUTE, 1, "", False),
                packed("concurrency", 100, MINUTE, 1, "", False),
            ]
        )
        # The first admission of a batch meets a key that exists: warm the windows (seen holding the current slot).
        await engine.run("admit", keys, [limits, "warm"])
        admin.config_resetstat()
        replies = await engine.run_batch([_admit(keys, [limits, f"lease{n:02d}"]) for n in range(16)])
        stats = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in admin.info("commandstats").items()}
        assert [r[0] for r in replies] == [1] * 14 + [0, 0]  # 15 leases on cc.a, "warm" one of them
        assert [r[2 + 3 * 5 + 1] for r in replies[:14]] == list(range(13, -1, -1))
        t = admin.hgetall("{t}:sw2.a")
        slots = [int(v) for f, v in t.items() if f not in (b"t", b"o", b"n")]
        assert int(t[b"t"]) == sum(slots) == 2 * 15
        assert int(admin.hget("{t}:fw.a", "n")) == 15
        assert admin.zcard("{t}:cc.a") == 15 and admin.zcard("{t}:cc.b") == 15
        assert stats.get("zrange", 0) == 2 and stats.get("zcard", 0) == 2
        assert stats["hincrby"] <= 4 + 2  # the first take of each window, its slot, and the refused ones' check
        assert 0 < admin.pttl("{t}:cc.a") <= MINUTE + 1001 and admin.pttl("{t}:sw2.a") > 0
    finally:
        admin.close()
        await engine.close()
