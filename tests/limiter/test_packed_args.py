"""admit.lua's packed limits: a malformed one is refused by name, and the scripts' memo of parsed limits stays exact
when it empties itself."""

from __future__ import annotations

import pytest

from tests.limiter.conftest import Store
from tollgate.errors import StoreError
from tollgate.limiter.script_args import packed_limit
from tollgate.limiter.spec import LimitSpec

MEMO_MAX = 4_096  # lua/common.lua: parsed limits remembered before the memo starts afresh


@pytest.mark.parametrize("packed", ["fixed_window 10 60000 1 minute", "no_such_kind 10 60000 1  0", "gcra ten 1 1  0"])
async def test_a_malformed_packed_limit_fails_the_call_naming_it(store: Store, packed: str) -> None:
    with pytest.raises(StoreError, match="malformed packed limit"):
        await store.engine.run("admit", ["k"], [packed, ""])


async def test_more_distinct_limits_than_the_memo_keeps_are_each_counted_exactly(store: Store) -> None:
    """Token limits are packed with their cost, so real traffic sends many distinct strings: past the memo's size
    it empties and parses afresh, and every admission still counts what its own string says."""
    # A day's window: the few thousand calls below never straddle its boundary (a minute's did, now and then).
    spec = LimitSpec(name="tpm", kind="fixed_window", limit=10**12, window_ms=86_400_000, cost=1)
    costs = range(1, MEMO_MAX + 200)
    for cost in costs:
        reply = await store.engine.run("admit", ["tokens"], [packed_limit(spec.with_cost(cost)), ""])
        assert reply[0] == 1
    reply = await store.engine.run("admit", ["tokens"], [packed_limit(spec.with_cost(0)), ""])
    assert spec.limit - reply[3] == sum(costs)  # the remaining after every cost above
