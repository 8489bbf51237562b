"""A fixed window seen holding the current window is consumed by one HINCRBY at admission (lua/fixed_window.lua's
take), given back when the admission is refused, and set up again when its key went away since it was seen."""

from __future__ import annotations

import dataclasses

import pytest

from .conftest import Store
from .scriptcalls import Lim, admit, peek
from .test_lease_ttl import raw

MINUTE = 60_000
FW = Lim("{t}:fw.take", "fixed_window", 3, MINUTE, param="hour")
FULL = Lim("{t}:sw.full", "sliding_window", 1, MINUTE, param="10")


async def remaining(store: Store) -> int:
    return (await peek(store.engine, dataclasses.replace(FW, cost=0)))[0].remaining


async def test_a_refused_admission_gives_back_what_its_fixed_window_took(store: Store) -> None:
    assert (await admit(store.engine, FW))[0].remaining == 2  # the key is seen holding this hour from now on
    assert (await admit(store.engine, FULL)).admitted
    for limits in ((FW, FULL), (FULL, FW)):  # refused by the other limit, checked before or after
        reply = await admit(store.engine, *limits)
        assert not reply.admitted
        assert await remaining(store) == 2
    assert [(await admit(store.engine, FW))[0].remaining for _ in range(2)] == [1, 0]
    refused = await admit(store.engine, FW)  # refused by the fixed window itself
    assert not refused.admitted and not refused[0].allowed and refused[0].remaining == 0
    assert refused[0].retry_ms == refused[0].reset_ms > 0
    assert await remaining(store) == 0


async def test_a_fixed_window_deleted_since_it_was_seen_gets_its_window_and_ttl_again(
    store: Store, request: pytest.FixtureRequest
) -> None:
    first = await admit(store.engine, FW)
    raw(store, request, "DEL", FW.key)  # an admin reset, an eviction
    again = await admit(store.engine, FW)
    assert again.admitted and again[0].remaining == 2 and again[0].mark == first[0].mark
    start = raw(store, request, "HMGET", FW.key, "w")[0]
    assert int(start) == first[0].mark
    assert 0 < int(raw(store, request, "PTTL", FW.key)) <= 3_600_001
    assert await remaining(store) == 2
