"""Waiting for a stream's extension in flight: done whatever it ended with, and the waiter's own cancellation kept."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.policy.settlement import _finished


async def test_an_extension_that_failed_or_was_cancelled_elsewhere_is_simply_over() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the store went away")

    async def sleeps() -> None:
        await asyncio.sleep(10)

    failed = asyncio.ensure_future(fails())
    await _finished(failed)
    assert failed.done() and isinstance(failed.exception(), RuntimeError)
    cancelled = asyncio.ensure_future(sleeps())
    asyncio.get_running_loop().call_later(0.01, cancelled.cancel)
    await _finished(cancelled)
    assert cancelled.cancelled()
    await _finished(failed)  # already done: returns at once


async def test_cancelling_the_waiter_cancels_it_and_the_extension_as_gather_does() -> None:
    async def sleeps() -> None:
        await asyncio.sleep(10)

    extension = asyncio.ensure_future(sleeps())
    waiter = asyncio.ensure_future(_finished(extension))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)
    assert extension.cancelled()
