"""The Redis engine's EVALSHA packer writes exactly what hiredis would, from its cache or not."""

from __future__ import annotations

import hiredis
import pytest

from tollgate.limiter.store.engine import ScriptCall
from tollgate.limiter.store.redis_engine import _Packer

SHA = "0123456789abcdef0123456789abcdef01234567"
CALLS = [
    ScriptCall(
        "admit", ["tg:{t.t0}:sw:rpm", "tg:{t.é}:cc"], ["sliding_window", 1_000_000_000_000, 60_000, 1, "20", "0"]
    ),
    ScriptCall("settle", ["k"], ["concurrency", -1, 0, -9_223_372_036_854_775_807, "", "1"]),  # negatives, "", "1" vs 1
    ScriptCall("admit", [], []),
]


def test_a_packed_call_is_byte_for_byte_what_hiredis_packs_the_first_and_the_second_time() -> None:
    packer = _Packer()
    for _ in range(2):  # the second time every value comes from the cache
        for call in CALLS:
            expected = hiredis.pack_command(("EVALSHA", SHA, len(call.keys), *call.keys, *call.args))
            assert packer.evalsha(SHA, call) == expected


def test_the_cache_is_emptied_when_full_and_stays_correct() -> None:
    packer = _Packer(limit=8)
    for i in range(50):
        call = ScriptCall("admit", [f"key-{i}"], [i, str(i), f"lease-{i}"])
        assert packer.evalsha(SHA, call) == hiredis.pack_command(("EVALSHA", SHA, 1, *call.keys, *call.args))
        assert len(packer._strs) <= 8 and len(packer._ints) <= 8


def test_an_argument_that_is_neither_str_nor_int_is_refused() -> None:
    with pytest.raises(TypeError):
        _Packer().evalsha(SHA, ScriptCall("admit", ["k"], [1.5]))  # type: ignore[list-item]


def test_a_batchs_lease_ids_are_packed_without_being_kept() -> None:
    """A lease id is new with every admission: kept, it would only push the values that do repeat out of the cache."""
    packer = _Packer()
    calls = [
        ScriptCall("admit", ("tg:{t.t0}:sw:rpm",), ("sliding_window 1000 60000 20 1", f"lease-{i}")) for i in range(3)
    ]
    packed = packer.batch(b"$5\r\nFCALL\r\n", "tollgate_admit", calls)
    assert packed.count(b"$7\r\nlease-") == 3
    assert not [value for value in packer._strs if value.startswith("lease-")]
    assert "tg:{t.t0}:sw:rpm" in packer._strs and "sliding_window 1000 60000 20 1" in packer._strs
