"""A short coroutine run beside the caller without a Task: its first step at once, each later one by a callback."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

__all__ = ["Eager"]


class Eager:
    """Runs ``coro`` as ``loop.create_task(coro)`` would, and says when it ended in :attr:`done`, a future.

    On Python 3.11 a Task costs a stream's relay several microseconds that
    this does not: its name formatted (``Task-N``), itself added to a WeakSet
    (interpreted code) and removed by a weak reference's callback when it
    dies, its first step scheduled for the next loop turn. Here the first
    step runs inside the call, up to the coroutine's first wait; each later
    one runs in the callback of the future it waited on. Every step runs in
    a copy of the caller's context, as a Task's do.

    :attr:`done` gets the coroutine's outcome: None, its exception, or
    cancelled. Cancelling :attr:`done` cancels the future the coroutine
    waits on, so the coroutine gets ``CancelledError`` there, as a cancelled
    Task's would (awaiting :attr:`done` and being cancelled cancels it).
    Meant for short coroutines that await futures (a store's round trip);
    one that yields bare (``asyncio.sleep(0)``) is resumed on the next turn.
    """

    __slots__ = ("done", "_coro", "_context", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self._coro = coro
        self._context = contextvars.copy_context()
        self._waiting: asyncio.Future[Any] | None = None
        self.done.add_done_callback(self._ended)
        self._context.run(self._step)

    def _resume(self, _: object) -> None:
        self._context.run(self._step)

    def _step(self) -> None:
        self._waiting = None
        done = self.done
        try:
            yielded = self._coro.send(None)
        except StopIteration:
            if not done.done():
                done.set_result(None)
            return
        except asyncio.CancelledError:
            done.cancel()
            return
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: recorded, and raised on, as a Task does
            if not done.done():
                done.set_exception(exc)
            raise
        if yielded is None:  # a bare yield: the next step on the next turn
            done.get_loop().call_soon(self._resume, None)
            return
        # An awaited future yields itself, marked as blocking: the marker says it was awaited, not yielded by hand.
        if not getattr(yielded, "_asyncio_future_blocking", False):
            self._coro.close()
            if not done.done():
                done.set_exception(RuntimeError(f"a coroutine run by Eager yielded {yielded!r}, which is no future"))
            return
        yielded._asyncio_future_blocking = False
        self._waiting = yielded
        if done.cancelled():  # cancelled during this step: the wait it began is cancelled at once
            yielded.cancel()
        yielded.add_done_callback(self._resume)

    def _ended(self, done: asyncio.Future[None]) -> None:
        """``done`` settled: when it was cancelled from outside, the coroutine's wait is cancelled too."""
        waiting = self._waiting
        if waiting is not None and done.cancelled():
            waiting.cancel()
