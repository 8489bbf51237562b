"""A pipeline's admissions as one admit.lua batch (lua/admission.lua, the Redis engine's ADMIT_BATCH): each answered
and written exactly as its own call would have been, one that fails failing alone."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import hiredis
import pytest
from redis.exceptions import ResponseError

from tests.support.redis import RedisServer
from tollgate.clock import ManualClock, SystemClock
from tollgate.errors import StoreError
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import EmbeddedEngine, RedisEngine
from tollgate.limiter.store.engine import ScriptCall
from tollgate.limiter.store.redis_engine import ADMIT_BATCH, _Packer, _spread

MINUTE = 60_000
# (key, kind, limit, window_ms, param): small limits, so that a batch meets refusals, waits and overdrawn costs.
LIMITS = [
    ("{t}:sw2.a", "sliding_window", 40, MINUTE, "20"),
    ("{t}:sw2.b", "sliding_window", 15, 10_000, "5"),
    ("{t}:fw.a", "fixed_window", 30, MINUTE, "minute"),
    ("{t}:gcra.a", "gcra", 20, 10_000, ""),
    ("{t}:cc.a", "concurrency", 6, MINUTE, ""),
    ("{t}:cc.b", "concurrency", 4, 5_000, ""),
]


def packed(kind: str, limit: int, window_ms: int, cost: int, param: str, shadow: bool) -> str:
    return f"{kind} {limit} {window_ms} {cost} {param} {'1' if shadow else '0'}"


def random_admission(rng: random.Random) -> tuple[list[str], list[Any]]:
    """One admission's KEYS and packed ARGV: a few of LIMITS in random order, random costs, some in shadow mode."""
    chosen = rng.sample(LIMITS, rng.randint(1, 4))
    keys, args = [], []
    for key, kind, limit, window_ms, param in chosen:
        cost = 1 if kind == "concurrency" else rng.choice([0, 1, 1, 2, 5, 12, limit + 1])
        keys.append(key)
        args.append(packed(kind, limit, window_ms, cost, param, rng.random() < 0.15))
    args.append(f"lease{rng.getrandbits(40)}")
    return keys, args


def batch_argv(admissions: list[tuple[list[str], list[Any]]]) -> tuple[list[str], list[Any]]:
    """A batch of admissions given as (KEYS, a packed value per limit then the lease id): per admission its limits
    joined, its lease id and where its keys start; the same KEYS sent once (as the Redis engine's packer does)."""
    keys: list[str] = []
    args: list[Any] = ["*"]
    starts: dict[tuple[str, ...], int] = {}
    for k, a in admissions:
        start = starts.get(tuple(k))
        if start is None:
            start = starts[tuple(k)] = len(keys)
            keys += k
        args += [";".join(a[:-1]), a[-1], start]
    return keys, args


def state(engine: EmbeddedEngine) -> dict[str, Any]:
    ks = engine.keyspace
    out: dict[str, Any] = {}
    for key in sorted(ks.keys()):
        if ":cc." in key:
            raw = ks.call("ZRANGE", key, "0", "-1", "WITHSCORES")
        elif ":gcra." in key:
            raw = [ks.call("GET", key)]
        else:
            raw = ks.call("HGETALL", key)
        items = list(raw.values()) if isinstance(raw, dict) else list(raw)
        out[key] = (items, ks.ttl_ms(key))
    return out


@pytest.mark.parametrize("seed", range(30))
async def test_a_batch_answers_and_writes_exactly_as_its_admissions_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    one_by_one, batched = EmbeddedEngine(clock), EmbeddedEngine(clock)
    leases: list[tuple[str, str]] = []  # (concurrency key, lease id) admitted
    for _ in range(12):
        admissions = [random_admission(rng) for _ in range(rng.randint(1, 12))]
        singles = [await one_by_one.run("admit", keys, args) for keys, args in admissions]
        keys, args = batch_argv(admissions)
        assert await batched.run("admit", keys, args) == singles
        assert state(batched) == state(one_by_one)
        for (k, a), reply in zip(admissions, singles):
            if reply[0] == 1:
                leases += [(key, a[-1]) for key in k if ":cc." in key]
        rng.shuffle(leases)
        for key, lease in leases[: rng.randint(0, len(leases))]:  # some requests end: their leases go back
            for engine in (one_by_one, batched):
                await engine.run("settle", [key], [f"concurrency 1 {MINUTE} ", -1, lease])
        clock.advance(rng.choice([0, 0.4, 2.5, 7, 31]))


def test_the_packer_writes_a_batch_byte_for_byte_as_hiredis_packs_its_command_each_keys_tuple_once() -> None:
    keys = ("k1", "k2")
    calls = [
        ScriptCall("admit", keys, ["sliding_window 10 60000 1 20 0;concurrency 5 60000 1  0", "lease1"]),
        ScriptCall("admit", ("k3",), ["gcra 10 1000 1  0", ""]),
        ScriptCall("admit", keys, ["sliding_window 10 60000 2 20 0;concurrency 5 60000 1  0", "lease2"]),
    ]
    packer = _Packer()
    for _ in range(2):  # the second time from the cache
        expected = hiredis.pack_command(
            ("FCALL", "fn", 3, "k1", "k2", "k3", "*", *calls[0].args, 0, *calls[1].args, 2, *calls[2].args, 0)  # type: ignore[arg-type]
        )
        assert packer.batch(b"$5\r\nFCALL\r\n", "fn", calls) == expected


def test_a_batch_reply_is_spread_over_its_calls_and_an_error_of_the_whole_batch_over_each() -> None:
    failed = ResponseError("NOSCRIPT")
    assert _spread([b"a", [1, 2, 3], failed, b"z"], [1, 3, 2, 1]) == [b"a", 1, 2, 3, failed, failed, b"z"]
    wrong = _spread([[1]], [2])  # a list of the wrong length: never taken as replies
    assert len(wrong) == 2 and all(isinstance(r, ResponseError) for r in wrong)


@pytest.mark.process
@pytest.mark.parametrize("functions", [True, False], ids=["fcall", "evalsha"])
async def test_a_tick_of_admissions_on_redis_is_one_batch_per_pipeline_and_each_is_exact(
    redis_standalone: RedisServer, functions: bool
) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    limiter = Limiter({"r": engine}, clock=SystemClock(), cache_size=0)
    admin = redis_standalone.client()
    try:
        await limiter.admit([LimitSpec(name="warm", kind="gcra", limit=1)])
        if not functions:
            engine._functions = False
        admin.config_resetstat()
        specs = [
            LimitSpec(name="rpm", kind="sliding_window", limit=25, window_ms=MINUTE, tenant="acme"),
            LimitSpec(name="inflight", kind="concurrency", limit=30, window_ms=MINUTE, tenant="acme"),
        ]
        decisions = await asyncio.gather(*(limiter.admit(specs) for _ in range(40)))
        assert sum(d.allowed for d in decisions) == 25
        assert sorted(d.limits[0].remaining for d in decisions if d.allowed) == list(range(25))
        verb = "fcall" if functions else "evalsha"
        assert admin.info("commandstats")[f"cmdstat_{verb}"]["calls"] == 3  # 16 + 16 + 8 admissions
        assert ADMIT_BATCH >= 16
    finally:
        admin.close()
        await limiter.close()


@pytest.mark.process
async def test_an_admission_that_fails_in_a_batch_on_redis_fails_alone(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    admin = redis_standalone.client()
    try:
        await engine.start()
        admin.set("{t}:sw2.x", "a string where a hash is wanted")
        admin.config_resetstat()
        good = (["{t}:fw.a"], [packed("fixed_window", 5, MINUTE, 1, "minute", False), ""])
        wrong_type = (["{t}:sw2.x"], [packed("sliding_window", 5, MINUTE, 1, "20", False), ""])
        malformed = (["{t}:fw.b"], ["fixed_window 5 nonsense", ""])
        calls = [good, wrong_type, good, malformed, good]
        results = await asyncio.gather(*(engine.run("admit", k, a) for k, a in calls), return_exceptions=True)
        assert [r[0] for r in (results[0], results[2], results[4])] == [1, 1, 1]
        assert [r[2 + 1] for r in (results[0], results[2], results[4])] == [4, 3, 2]
        assert isinstance(results[1], StoreError) and "WRONGTYPE" in str(results[1])
        assert isinstance(results[3], StoreError) and "malformed packed limit" in str(results[3])
        assert admin.info("commandstats")["cmdstat_fcall"]["calls"] == 1
    finally:
        admin.close()
        await engine.close()


async def test_sliding_windows_of_other_geometries_in_one_batch_are_each_charged_in_their_own_slot() -> None:
    """sliding_window.lua remembers the last geometry it worked out (now, window, slots): windows that differ, one
    after the other within an admission and across a batch's admissions at one now, each get their own slot."""
    engine = EmbeddedEngine(ManualClock())
    geometries = [(MINUTE, 20), (10_000, 5), (MINUTE, 3), (MINUTE, 20), (7_000, 20), (10_000, 4)]
    keys = [f"{{t}}:sw2.g{i}" for i in range(len(geometries))]
    args = [packed("sliding_window", 100, w, 1, str(slots), False) for w, slots in geometries]
    replies = await engine.run("admit", *batch_argv([(keys, [*args, ""])] * 3))
    for reply in replies:
        now_ms = reply[1] // 1000
        for i, (window_ms, slots) in enumerate(geometries):
            slot_ms = -(-window_ms // slots)
            cur = now_ms // slot_ms
            allowed, _, reset_ms, _, mark = reply[2 + 5 * i : 7 + 5 * i]
            assert (allowed, mark, reset_ms) == (1, cur, (cur + 1) * slot_ms + window_ms - now_ms), (i, window_ms)


async def test_joined_limits_answer_as_one_packed_value_per_limit_and_refuse_a_count_unlike_the_keys() -> None:
    """admit.lua's joined ARGV (the limiter's: every limit in one string) is the same admission as one packed value
    per limit; a joined string whose limits do not match the keys one for one is an error, not a partial admission."""
    clock = ManualClock()
    joined, per_limit = EmbeddedEngine(clock), EmbeddedEngine(clock)
    keys = ["{t}:sw2.a", "{t}:fw.a", "{t}:cc.a"]
    limits = [
        packed("sliding_window", 40, MINUTE, 1, "20", False),
        packed("fixed_window", 30, MINUTE, 1, "minute", False),
        packed("concurrency", 6, MINUTE, 1, "", False),
    ]
    for n in range(8):
        lease = f"lease{n}"
        assert await joined.run("admit", keys, [";".join(limits), lease]) == await per_limit.run(
            "admit", keys, [*limits, lease]
        )
    assert state(joined) == state(per_limit)
    with pytest.raises(StoreError, match="2 limits for 3 keys"):
        await joined.run("admit", keys, [";".join(limits[:2]), "lease"])
