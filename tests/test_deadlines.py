"""Coarse deadlines behave like asyncio.timeout: expiry becomes TimeoutError, other cancellations stay cancellations."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.upstream.deadlines import Deadlines


async def test_a_passed_deadline_cancels_the_wait_and_raises_timeout_error_within_its_resolution() -> None:
    deadlines = Deadlines(resolution=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadlines.at(started + 0.1) as d:
            await asyncio.sleep(5)
    assert d.expired()
    assert 0.1 <= loop.time() - started < 0.2
    assert not deadlines.active


async def test_rescheduling_moves_the_deadline() -> None:
    deadlines = Deadlines(resolution=0.02)
    loop = asyncio.get_running_loop()
    async with deadlines.at(loop.time() + 0.05) as d:
        d.reschedule(loop.time() + 1.0)
        await asyncio.sleep(0.15)  # past the first deadline, well before the second
    assert not d.expired()


@pytest.mark.parametrize("plain", [False, True], ids=["async-with", "plain-with"])
async def test_a_cancellation_from_elsewhere_stays_a_cancellation(plain: bool) -> None:
    deadlines = Deadlines(resolution=0.02)

    async def wait() -> None:
        deadline = deadlines.at(asyncio.get_running_loop().time() + 10)
        if plain:  # as the forward stage uses it
            with deadline:
                await asyncio.sleep(5)
        else:
            async with deadline:
                await asyncio.sleep(5)

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines.active


async def test_a_fired_deadline_swallowed_inside_the_block_leaves_the_task_uncancelled() -> None:
    deadlines = Deadlines(resolution=0.02)
    async with deadlines.at(asyncio.get_running_loop().time() + 0.03) as d:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass  # the stream relay ends the stream itself on an idle timeout
    assert d.expired()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # and the task can go on awaiting


async def test_a_deadline_used_as_a_plain_context_manager_also_times_out() -> None:
    deadlines = Deadlines(resolution=0.02)
    with pytest.raises(TimeoutError), deadlines.at(asyncio.get_running_loop().time() + 0.05) as d:
        await asyncio.sleep(5)
    assert d.expired() and not deadlines.active
