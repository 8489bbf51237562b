"""Eager: a coroutine run without a Task ends, fails and is cancelled as a Task would, in a context of its own."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from tollgate.eager import Eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test_var", default="unset")


async def test_the_first_step_runs_inside_the_call_and_the_rest_when_the_awaited_future_is_done() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def work() -> None:
        seen.append("started")
        seen.append(await gate)
        seen.append(asyncio.current_task())

    eager = Eager(work(), loop)
    assert seen == ["started"]  # before the call returned, up to its wait
    assert not eager.done()
    gate.set_result(7)
    await eager.future()
    assert seen[:2] == ["started", 7]
    assert seen[2] is None  # its later steps ran in a callback, not in a Task


async def test_a_coroutine_that_never_waits_is_done_when_the_call_returns() -> None:
    async def work() -> None:
        return None

    eager = Eager(work(), asyncio.get_running_loop())
    assert eager.done()
    assert eager.future().result() is None  # made after the end: done already


async def test_no_task_is_made() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def work() -> None:
        await gate

    before = len(asyncio.all_tasks())
    eager = Eager(work(), loop)
    assert len(asyncio.all_tasks()) == before
    gate.set_result(None)
    await eager.future()


async def test_its_exception_is_the_done_futures() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def work() -> None:
        await gate
        raise ValueError("the store said no")

    eager = Eager(work(), loop)
    waited = eager.future()
    gate.set_result(None)
    with pytest.raises(ValueError, match="the store said no"):
        await waited


async def test_an_exception_nobody_waits_for_goes_to_the_loops_handler() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:

        async def work() -> None:
            raise ValueError("nobody listens")

        eager = Eager(work(), loop)
        assert eager.done()
        assert len(seen) == 1 and isinstance(seen[0]["exception"], ValueError)
        with pytest.raises(ValueError, match="nobody listens"):  # a waiter that comes later still gets it
            await eager.future()
    finally:
        loop.set_exception_handler(None)


async def test_cancelling_done_cancels_the_wait_and_lets_the_coroutine_clean_up() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    cleaned: list[str] = []

    async def work() -> None:
        try:
            await gate
        finally:
            cleaned.append("cleaned")

    eager = Eager(work(), loop)
    eager.future().cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert gate.cancelled()
    assert cleaned == ["cleaned"]
    assert eager.done() and eager.future().cancelled()


async def test_a_waiter_cancelled_while_awaiting_done_cancels_the_coroutine() -> None:
    """What the stream's settling relies on: the waiter's own cancellation reaches the extension in flight."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def work() -> None:
        await gate

    eager = Eager(work(), loop)

    async def waiter() -> None:
        await eager.future()

    task = loop.create_task(waiter())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(3):
        await asyncio.sleep(0)
    assert gate.cancelled() and eager.done() and eager.future().cancelled()


async def test_the_awaited_future_cancelled_by_another_ends_it_cancelled() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def work() -> None:
        await gate

    eager = Eager(work(), loop)
    waited = eager.future()
    gate.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waited
    assert eager.done()


async def test_it_runs_in_a_copy_of_the_callers_context() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def work() -> None:
        seen.append(VAR.get())
        VAR.set("inside")
        await gate
        seen.append(VAR.get())

    VAR.set("caller")
    eager = Eager(work(), loop)
    assert VAR.get() == "caller"  # what the coroutine set stays in its own context
    gate.set_result(None)
    await eager.future()
    assert seen == ["caller", "inside"]
    assert VAR.get() == "caller"


async def test_a_bare_yield_resumes_on_the_next_turn() -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    eager = Eager(work(), asyncio.get_running_loop())
    assert not eager.done()
    await asyncio.wait_for(eager.future(), 1)


async def test_a_coroutine_yielding_something_else_than_a_future_fails() -> None:
    class Odd:
        def __await__(self):  # type: ignore[no-untyped-def]
            yield "not a future"

    async def work() -> None:
        await Odd()

    eager = Eager(work(), asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="which is no future"):
        await eager.future()


async def test_one_dropped_while_it_waits_is_let_go_of_quietly() -> None:
    """Nothing waits on it any more and the future it awaits is gone too: freeing it closes its coroutine (an
    interpreted one) without an 'ignored GeneratorExit' error."""
    import gc
    import sys

    loop = asyncio.get_running_loop()
    unraisable: list[object] = []
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        gate: asyncio.Future[None] | None = loop.create_future()

        async def work() -> None:
            assert gate is not None
            await gate

        eager: Eager | None = Eager(work(), loop)
        assert eager is not None and not eager.done()
        eager = gate = None
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
