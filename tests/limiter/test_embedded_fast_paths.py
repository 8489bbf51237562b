"""The embedded engine's shortcuts answer exactly what its general paths answer.

An all-integer reply comes back through the engine's int64 buffer on LuaJIT
and on the Lua stack without one (Lua 5.1); the keyspace remembers checked
integer arguments, TIME's seconds and a sorted set's lowest score string, and
takes one score pair without a list. Each is checked here against the path it
stands in for, without a Redis server (tests/limiter/test_keyspace.py compares
the keyspace with Redis itself).
"""

from __future__ import annotations

import lupa
import pytest

from tollgate.clock import ManualClock
from tollgate.errors import StoreError
from tollgate.limiter.store import EmbeddedEngine, Script
from tollgate.limiter.store import keyspace as keyspace_module
from tollgate.limiter.store.embedded import REPLY_SLOTS
from tollgate.limiter.store.keyspace import Keyspace, ReplyError

NOW_NS = 1_700_000_000_123_456_789


def _probe(body: str) -> dict[str, Script]:
    return {"probe": Script("probe", body, "", "", body)}


@pytest.mark.parametrize("n", [0, 1, 27, REPLY_SLOTS, REPLY_SLOTS + 1, 5000])
def test_an_integer_reply_of_any_length_comes_back_whole(n: int) -> None:
    """Up to REPLY_SLOTS integers through the buffer, more through the general conversion: the same list."""
    body = f"local out = {{}} for i = 1, {n} do out[i] = i * 1000003 - 2 ^ 40 end return out"
    engine = EmbeddedEngine(ManualClock(), scripts=_probe(body))
    got = engine.run_sync("probe", [], [])
    assert got == [i * 1000003 - 2**40 for i in range(1, n + 1)]
    assert all(type(x) is int for x in got)


def test_a_short_reply_after_a_long_one_holds_only_its_own_items() -> None:
    body = "local n = tonumber(ARGV[1]) local out = {} for i = 1, n do out[i] = n end return out"
    engine = EmbeddedEngine(ManualClock(), scripts=_probe(body))
    assert engine.run_sync("probe", [], [100]) == [100] * 100
    assert engine.run_sync("probe", [], [2]) == [2, 2]
    assert engine.run_sync("probe", [], [0]) == []


def test_a_reply_that_stops_being_all_integers_midway_is_converted_item_by_item() -> None:
    """The buffer is written while the items are checked: a string at the end sends the reply the general way."""
    engine = EmbeddedEngine(ManualClock(), scripts=_probe("return {1, 2, 3, 2.5, 'x'}"))
    assert engine.run_sync("probe", [], []) == [1, 2, 3, 2, b"x"]


def _admissions(engine: EmbeddedEngine, clock: ManualClock) -> list[object]:
    """A run of admissions, settlements and a refusal over every kind of limit; every reply, in order."""
    limits = [
        "sliding_window 5 60000 1 20 0",
        "sliding_window 1000 60000 40 20 0",
        "concurrency 3 60000 1  0",
        "fixed_window 100 60000 1 month 0",
        "gcra 10 60000 1  0",
    ]
    keys = ["t:{a}:sw2.rpm", "t:{a}:sw2.tpm", "t:{a}:cc", "t:{a}:fw", "t:{a}:gcra"]
    replies: list[object] = []
    for i in range(8):
        reply = engine.run_sync("admit", keys, [*limits, f"lease{i}"])
        replies.append(reply)
        if i % 3 == 2:
            replies.append(
                engine.run_sync(
                    "settle",
                    keys[1:3],
                    ["sliding_window 1000 60000 20", -15, reply[2 + 5 + 4], "concurrency 3 60000 ", -1, f"lease{i}"],
                )
            )
        clock.advance(0.25)
    return replies


def test_the_scripts_reply_the_same_on_lua_5_1_without_ffi_or_table_new(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lua 5.1 (a lupa build without LuaJIT) has no FFI and no table.new: the fallbacks give the same replies."""
    jit_clock = ManualClock(wall_ns=NOW_NS)
    on_jit = _admissions(EmbeddedEngine(jit_clock), jit_clock)
    monkeypatch.setattr(keyspace_module, "_lua", lupa.lua51)
    plain_clock = ManualClock(wall_ns=NOW_NS)
    plain = EmbeddedEngine(plain_clock)
    assert plain.keyspace.lua.eval("jit") is None
    assert _admissions(plain, plain_clock) == on_jit
    assert any(r[0] == 0 for r in on_jit if isinstance(r, list) and len(r) == 27)  # a refusal is among them


def test_a_checked_integer_argument_is_remembered_and_a_malformed_one_still_refused() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    ks.call("HSET", "h", "n", "1")
    for _ in range(3):
        assert ks.call("PEXPIRE", "h", "60000") == 1
        assert ks.call("HINCRBY", "h", "n", "1") in (2, 3, 4)
    for bad in ("060000", "+60000", " 60000", "60000 ", "6e4", ""):
        with pytest.raises(ReplyError, match="not an integer"):
            ks.call("PEXPIRE", "h", bad)
    assert ks.call("PTTL", "h") == 60000


def test_many_distinct_integer_arguments_keep_their_values_past_the_memo_bound() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    ks.call("HSET", "h", "n", "0")
    total = 0
    for i in range(1, 3000):
        total += i
        assert ks.call("HINCRBY", "h", "n", str(i)) == total


def test_time_follows_the_clock_across_seconds_and_back() -> None:
    ks = Keyspace()
    for ns, expected in [
        (NOW_NS, ["1700000000", "123456"]),
        (NOW_NS + 1_000, ["1700000000", "123457"]),
        (NOW_NS + 900_000_000, ["1700000001", "23456"]),
        (NOW_NS, ["1700000000", "123456"]),
    ]:
        ks.begin(ns)
        assert ks.call("TIME") == expected


def test_the_lowest_score_string_follows_every_change_of_the_minimum() -> None:
    """ZRANGE 0 0 WITHSCORES and ZRANGEBYSCORE ... LIMIT 0 1 answer the cached lowest score's string."""
    ks = Keyspace()
    ks.begin(NOW_NS)
    lowest = lambda: (  # noqa: E731
        ks.call("ZRANGE", "z", "0", "0", "WITHSCORES"),
        ks.call("ZRANGEBYSCORE", "z", "-inf", "+inf", "WITHSCORES", "LIMIT", "0", "1"),
    )
    ks.call("ZADD", "z", "1700000060123", "a")
    assert lowest() == (["a", "1700000060123"], ["a", "1700000060123"])
    ks.call("ZADD", "z", "1700000060100", "b")  # a new lowest
    assert lowest() == (["b", "1700000060100"], ["b", "1700000060100"])
    ks.call("ZADD", "z", "1700000060000", "b")  # the lowest moves lower
    assert lowest() == (["b", "1700000060000"], ["b", "1700000060000"])
    ks.call("ZADD", "z", "1700000070000", "b")  # the lowest moves up, past another member
    assert lowest() == (["a", "1700000060123"], ["a", "1700000060123"])
    ks.call("ZADD", "z", "2.5", "c")
    assert lowest() == (["c", "2.5"], ["c", "2.5"])
    ks.call("ZREM", "z", "c")
    assert lowest() == (["a", "1700000060123"], ["a", "1700000060123"])
    assert ks.call("ZRANGE", "z", "0", "0") == ["a"]


def test_one_score_pair_and_several_are_checked_before_anything_is_written() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    assert ks.call("ZADD", "z", "1", "a") == 1
    assert ks.call("ZADD", "z", "2", "b", "3", "c") == 2
    with pytest.raises(ReplyError, match="not a valid float"):
        ks.call("ZADD", "z", "x", "d")
    with pytest.raises(ReplyError, match="not a valid float"):
        ks.call("ZADD", "z", "4", "d", "x", "e")
    assert ks.call("ZCARD", "z") == 3
    assert ks.call("ZADD", "z", "XX", "5", "a") == 0 and ks.call("ZSCORE", "z", "a") == "5"
    assert ks.call("ZADD", "z", "xx", "6", "nobody") == 0 and ks.call("ZCARD", "z") == 3


def test_hincrby_counts_from_what_the_field_holds_whoever_wrote_it() -> None:
    """HINCRBY remembers the string it wrote last; a field rewritten by HSET is read again."""
    ks = Keyspace()
    ks.begin(NOW_NS)
    assert ks.call("HINCRBY", "h", "n", "1") == 1
    assert ks.call("HINCRBY", "h", "n", "5") == 6
    assert ks.call("HINCRBY", "h", "m", "6") == 6  # another field, holding the same string
    assert ks.call("HINCRBY", "h", "n", "-2") == 4
    ks.call("HSET", "h", "n", "10")
    assert ks.call("HINCRBY", "h", "n", "1") == 11
    ks.call("HSET", "h", "n", "x")
    with pytest.raises(ReplyError, match="hash value is not an integer"):
        ks.call("HINCRBY", "h", "n", "1")
    ks.call("DEL", "h")
    assert ks.call("HINCRBY", "h", "m", "2") == 2
    assert ks.call("HMGET", "h", "m", "n") == ["2", None]


@pytest.mark.parametrize("fields", [1, 2, 3, 4, 5])
def test_hmget_answers_any_number_of_fields_present_or_not(fields: int) -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    names = ["t", "o", "n", "7", "x"][:fields]
    assert ks.call("HMGET", "h", *names) == [None] * fields
    ks.call("HSET", "h", "t", "1", "n", "3", "x", "5")
    assert ks.call("HMGET", "h", *names) == [{"t": "1", "n": "3", "x": "5"}.get(f) for f in names]


def test_a_failing_script_names_its_error_without_a_traceback_handler() -> None:
    """The runtime has no debug global (lupa would install debug.traceback on every call): errors keep their text."""
    scripts = {
        "wrongtype": Script(
            "wrongtype", "", "", "", "redis.call('SET', 'k', '1') return redis.call('HMGET', 'k', 'f')"
        ),
        "bug": Script("bug", "", "", "", "local t = nil return t.field"),
    }
    engine = EmbeddedEngine(ManualClock(), scripts=scripts)
    assert engine.keyspace.lua.eval("debug") is None
    with pytest.raises(StoreError, match="WRONGTYPE Operation against a key holding the wrong kind of value"):
        engine.run_sync("wrongtype", [], [])
    with pytest.raises(StoreError, match="attempt to index local 't'"):
        engine.run_sync("bug", [], [])
    assert engine.stats.failures == 2
