"""shaping (lua/shaping.lua): a leaky bucket as a queue, the same on the embedded engine, a standalone Redis and a
3-master Cluster. Requests over the rate are admitted with a wait (their turn, one interval apart, in the order the
store saw them); past the longest wait they are refused and move nothing; the queue drains with time."""

from __future__ import annotations

import pytest

from .conftest import Store
from .scriptcalls import Lim, admit, peek, settle
from .test_scripts_parity import ttls

pytestmark = pytest.mark.serial  # turn times measured in wall-clock, with tens of milliseconds of slack

TEN_PER_SECOND = ("shaping", 10, 1000)  # kind, limit, window_ms: one request every 100 ms


def shaped(key: str, max_delay_ms: int) -> Lim:
    return Lim(key, *TEN_PER_SECOND, param=str(max_delay_ms))


async def test_requests_at_once_get_turns_one_interval_apart_in_the_order_they_came(store: Store) -> None:
    lim = shaped("{t}:sh", 2000)
    waits = []
    for _ in range(10):
        reply = await admit(store.engine, lim)
        assert reply.admitted
        waits.append(reply[0].retry_ms)
    assert waits[0] == 0
    assert waits == sorted(waits)  # first come, first served
    for i, wait in enumerate(waits):  # real stores let a little time pass between calls
        assert 100 * i - 60 <= wait <= 100 * i, waits


async def test_a_request_past_the_longest_wait_is_refused_and_moves_nothing(store: Store) -> None:
    lim = shaped("{t}:sh", 300)
    admitted = [await admit(store.engine, lim) for _ in range(4)]  # waits 0, 100, 200, 300
    assert all(r.admitted for r in admitted)
    assert admitted[-1][0].remaining == 0  # the queue holds no more
    refused = await admit(store.engine, lim)
    assert not refused.admitted
    assert 40 <= refused[0].retry_ms <= 100  # until the queue has room again
    again = await admit(store.engine, lim)
    assert not again.admitted and again[0].retry_ms <= refused[0].retry_ms  # the refusal took no turn
    assert (await peek(store.engine, lim))[0].remaining == 0


async def test_the_queue_drains_at_the_rate_and_its_key_expires_empty(
    store: Store, request: pytest.FixtureRequest
) -> None:
    lim = shaped("{t}:sh", 1000)
    for _ in range(3):
        assert (await admit(store.engine, lim)).admitted  # next free turn 300 ms away
    live = await ttls(store, request)
    assert any(k.endswith("{t}:sh") for k in live) and all(0 < ms <= 400 for ms in live.values()), live
    await store.advance(0.35)
    first = await admit(store.engine, lim)
    assert first.admitted and first[0].retry_ms == 0  # drained: served at once
    await store.advance(0.15)
    assert (await peek(store.engine, lim))[0].retry_ms == 0  # (the embedded keyspace expires keys as scripts run)
    assert not any(k.endswith("{t}:sh") for k in await ttls(store, request))  # nothing left behind


async def test_a_refund_gives_the_last_turn_back_but_never_before_now(store: Store) -> None:
    lim = shaped("{t}:sh", 2000)
    for _ in range(3):
        assert (await admit(store.engine, lim)).admitted  # turns at 0, 100, 200; next free at 300
    applied, overdraft, _remaining, _reset = await settle(store.engine, lim, -1, 0)
    assert applied == -1 and overdraft == 0
    assert 150 <= (await admit(store.engine, lim))[0].retry_ms <= 200  # the given-back turn, at 200
    applied, *_ = await settle(store.engine, lim, -50, 0)
    assert -3 <= applied < 0  # only the turns still ahead come back
    assert (await admit(store.engine, lim))[0].retry_ms == 0
