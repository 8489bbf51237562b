"""The gateway's embedded engine runs the script calls of one event-loop tick back to back, each still atomic."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.clock import ManualClock
from tollgate.errors import StoreError
from tollgate.limiter import Limiter, LimitSpec
from tollgate.limiter.store import EmbeddedEngine

# admit.lua ARGV for one fixed-window limit of 5 requests a minute.
FIVE_A_MINUTE = ["fixed_window", 5, 60_000, 1, "minute", "0"]


def coalescing_engine() -> EmbeddedEngine:
    return EmbeddedEngine(ManualClock(), name="main", coalesce=True)


async def test_calls_of_one_tick_run_in_arrival_order_and_each_admission_stays_atomic() -> None:
    engine = coalescing_engine()
    replies = await asyncio.gather(*(engine.run("admit", ["k"], FIVE_A_MINUTE) for _ in range(8)))
    assert [r[0] for r in replies] == [1, 1, 1, 1, 1, 0, 0, 0]  # the first five callers, and only five
    assert engine.stats.calls == 8


async def test_a_call_waits_for_the_end_of_the_tick_and_runs_then() -> None:
    engine = coalescing_engine()
    pending = engine.run("admit", ["k"], FIVE_A_MINUTE)
    assert engine.stats.calls == 0  # queued, not run: the flush is scheduled for the end of this tick
    assert (await pending)[0] == 1 and engine.stats.calls == 1


async def test_without_coalescing_a_call_runs_at_once() -> None:
    engine = EmbeddedEngine(ManualClock(), name="main")
    pending = engine.run("admit", ["k"], FIVE_A_MINUTE)
    assert engine.stats.calls == 1
    assert (await pending)[0] == 1


async def test_a_caller_cancelled_before_its_turn_consumes_nothing() -> None:
    engine = coalescing_engine()
    first = asyncio.ensure_future(engine.run("admit", ["k"], FIVE_A_MINUTE))  # queued until the end of the tick
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    after = await engine.run("admit", ["k"], FIVE_A_MINUTE)
    assert after[0] == 1 and after[3] == 4  # allowed, 4 of 5 left: the cancelled call never ran


async def test_a_failing_call_fails_only_its_caller() -> None:
    engine = coalescing_engine()
    bad, good = await asyncio.gather(
        engine.run("no_such_script", ["k"], []), engine.run("admit", ["k"], FIVE_A_MINUTE), return_exceptions=True
    )
    assert isinstance(bad, StoreError) and "unknown script" in str(bad)
    assert not isinstance(good, BaseException) and good[0] == 1


async def test_an_admission_whose_caller_is_cancelled_after_the_script_ran_is_refunded() -> None:
    """The script ran at the end of the tick, then the caller (a client that left) was cancelled: the lease comes back."""
    clock = ManualClock()
    limiter = Limiter({"main": EmbeddedEngine(clock, name="main", coalesce=True)}, clock=clock)
    one_stream = LimitSpec(name="streams", kind="concurrency", limit=1, window_ms=60_000, tenant="acme")
    try:
        task = asyncio.ensure_future(limiter.admit([one_stream]))
        await asyncio.sleep(0)  # the admission is queued; the engine's flush runs next
        asyncio.get_running_loop().call_soon(task.cancel)  # lands after the flush ran the script
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # the refund runs in the background
        await asyncio.sleep(0)
        assert (await limiter.admit([one_stream])).allowed
    finally:
        await limiter.close()
