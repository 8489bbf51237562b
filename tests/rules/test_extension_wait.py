"""Waiting for a stream's extension in flight: done whatever it ended with, and the waiter's own cancellation kept."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.eager import Eager
from tollgate.policy.settlement import _finished


async def test_an_extension_that_failed_or_was_cancelled_elsewhere_is_simply_over() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def fails() -> None:
        await gate
        raise RuntimeError("the store went away")

    failed = Eager(fails(), loop)
    loop.call_soon(gate.set_result, None)
    await _finished(failed)
    assert failed.done() and isinstance(failed.future().exception(), RuntimeError)

    store_call: asyncio.Future[None] = loop.create_future()

    async def waits() -> None:
        await store_call

    cancelled = Eager(waits(), loop)
    loop.call_later(0.01, store_call.cancel)
    await _finished(cancelled)
    assert cancelled.done() and cancelled.future().cancelled()
    await _finished(failed)  # already done: returns at once


async def test_cancelling_the_waiter_cancels_it_and_the_extension_as_gather_does() -> None:
    loop = asyncio.get_running_loop()
    store_call: asyncio.Future[None] = loop.create_future()

    async def waits() -> None:
        await store_call

    extension = Eager(waits(), loop)
    waiter = asyncio.ensure_future(_finished(extension))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)
    assert store_call.cancelled(), "the extension's store call was cancelled with its waiter"
    assert extension.done()
