"""A Deadlines object keeps the loop of the first deadline entered (no running-loop lookup per request), and stays right
when it is used from another event loop after being closed (a test's next loop)."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.upstream.deadlines import Deadlines


async def _times_out(deadlines: Deadlines) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), deadlines.at(started + 0.05) as deadline:
        await asyncio.sleep(5)
    assert deadline.expired()
    return loop.time() - started


def test_one_deadlines_object_times_out_the_current_task_in_each_of_two_event_loops() -> None:
    deadlines = Deadlines(resolution=0.01)
    first = asyncio.run(_times_out(deadlines))
    loop_of_first = deadlines.loop
    deadlines.close()  # as the upstream pool closes it with its loop
    second = asyncio.run(_times_out(deadlines))  # the kept loop is not running: the current task is looked up afresh
    assert loop_of_first is not None and deadlines.loop is not loop_of_first
    assert 0.05 <= first < 0.5 and 0.05 <= second < 0.5


async def test_a_deadline_cancels_the_task_that_entered_it_not_another_task_of_the_same_loop() -> None:
    deadlines = Deadlines(resolution=0.01)
    bystander_done = asyncio.Event()

    async def bystander() -> None:
        with deadlines.at(asyncio.get_running_loop().time() + 10):
            await asyncio.sleep(0.2)
        bystander_done.set()

    other = asyncio.create_task(bystander())
    await asyncio.sleep(0)  # the bystander entered first: the kept loop is this one
    elapsed = await _times_out(deadlines)
    await other
    assert bystander_done.is_set() and elapsed < 0.2
