"""A short coroutine run beside the caller without a Task: its first step at once, each later one by a callback."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Eager"]


class Eager:
    """Runs ``coro`` as ``loop.create_task(coro)`` would, for a caller that may later wait for it to end.

    On Python 3.11 a Task costs a stream's relay several microseconds that
    this does not: its name formatted (``Task-N``, through sprintf), itself
    added to a WeakSet (interpreted code) and removed by a weak reference's
    callback when it dies, its first step scheduled for the next loop turn.
    Here the first step runs inside the call, up to the coroutine's first
    wait; each later one runs in the callback of the future it waited on.
    Every step runs in a copy of the caller's context, as a Task's do.

    Its end costs nothing unless someone waits for it. The coroutine is
    driven through a wrapper that awaits it and records how it ended, so no
    StopIteration is raised (a compiled ``except`` builds a traceback: some
    microseconds); :meth:`future` makes the future a waiter awaits only when
    asked. A waiter cancelled while it waits cancels that future, which
    cancels what the coroutine waits on: the coroutine gets
    ``CancelledError`` there, as a Task awaited by a cancelled waiter does.
    An exception nobody waits for goes to the loop's exception handler, as
    a Task's does. Meant for short coroutines that await futures (a store's
    round trip); one that yields bare (``asyncio.sleep(0)``) is resumed on
    the next turn.
    """

    __slots__ = ("_loop", "_driver", "_context", "_waiting", "_ended", "_error", "_future")

    def __init__(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ended = False
        self._error: BaseException | None = None
        self._waiting: asyncio.Future[Any] | None = None  # what the coroutine waits on now
        self._future: asyncio.Future[None] | None = None  # made for the first waiter
        self._context = contextvars.copy_context()
        self._driver: Coroutine[Any, Any, None] | None = self._drive(coro)
        self._context.run(self._step)

    def done(self) -> bool:
        """Whether the coroutine has ended (returned, raised or been cancelled)."""
        return self._ended

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def future(self) -> asyncio.Future[None]:
        """A future done when the coroutine has ended, with its outcome (its exception, or cancelled); made on the
        first call. Cancelling it cancels the coroutine's wait in progress."""
        future = self._future
        if future is None:
            future = self._future = self._loop.create_future()
            if self._ended:
                self._settle(future)
            else:
                future.add_done_callback(self._waiter_left)
        return future

    async def _drive(self, coro: Coroutine[Any, Any, None]) -> None:
        """Awaits ``coro`` and records how it ended. It never returns, so driving it never raises StopIteration:
        once the outcome is recorded it parks on a bare yield and is let go of."""
        try:
            await coro
        except GeneratorExit:  # dropped unfinished, and closed (interpreted): it ends here, nothing to record
            raise
        except BaseException as exc:  # its outcome, for whoever waits
            self._error = exc
        self._ended = True
        future = self._future
        if future is not None:
            self._settle(future)
        elif isinstance(self._error, Exception):
            self._loop.call_exception_handler(
                {"message": "a coroutine run by Eager failed and nobody waits for it", "exception": self._error}
            )
        await _PARK

    def _settle(self, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled by its waiter
            return
        error = self._error
        if error is None:
            future.set_result(None)
        elif isinstance(error, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(error)

    def _resume(self, _: object) -> None:
        self._context.run(self._step)

    def _step(self) -> None:
        self._waiting = None
        driver = self._driver
        if driver is None:
            return
        yielded = driver.send(None)
        while not self._ended and yielded is not None and not getattr(yielded, "_asyncio_future_blocking", False):
            # Not an awaited future (which yields itself, marked as blocking): given back to the coroutine as an error.
            yielded = driver.throw(RuntimeError(f"a coroutine run by Eager yielded {yielded!r}, which is no future"))
        if self._ended:  # parked: its outcome is recorded
            self._driver = None
            if isinstance(self._error, (KeyboardInterrupt, SystemExit)):
                raise self._error  # raised on, as a Task does
            return
        if yielded is None:  # a bare yield: the next step on the next turn
            self._loop.call_soon(self._resume, None)
            return
        yielded._asyncio_future_blocking = False
        self._waiting = yielded
        yielded.add_done_callback(self._resume)

    def _waiter_left(self, future: asyncio.Future[None]) -> None:
        """The future a waiter awaits was cancelled (the waiter was): the coroutine's wait is cancelled too."""
        waiting = self._waiting
        if waiting is not None and future.cancelled():
            waiting.cancel()


class _Park:
    """An awaitable that yields once, bare, and is never resumed: where a finished :meth:`Eager._drive` stops."""

    def __await__(self) -> Generator[None, None, None]:
        yield None


_PARK = _Park()
