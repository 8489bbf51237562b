"""Coarse deadlines for upstream calls: one sweep every few milliseconds instead of an event-loop timer per request.

``asyncio.timeout_at`` arms and re-arms a loop timer per request and phase;
under uvloop that costs about as much as the rest of the gateway's own work
on a request. Upstream timeouts are seconds long, so a deadline checked
every ``resolution`` seconds (50 ms by default) is as good in practice, and
costs a dict insert and delete per request.

:class:`Deadline` has the contract of :class:`asyncio.Timeout`: when it
passes, the task is cancelled, and leaving the ``async with`` block turns
that cancellation into :class:`TimeoutError` (a cancellation from elsewhere,
such as a client disconnect, stays a cancellation). Entering and leaving do not
wait, so it is a plain context manager (``with``) as well as an asynchronous one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

__all__ = ["Deadline", "Deadlines"]


class Deadline:
    __slots__ = ("when", "fired", "_owner", "_task", "_cancelling")

    def __init__(self, owner: Deadlines, when: float) -> None:
        self.when = when
        self.fired = False
        self._owner = owner
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    def reschedule(self, when: float) -> None:
        self.when = when

    def expired(self) -> bool:
        return self.fired

    def __enter__(self) -> Deadline:
        owner = self._owner
        # current_task() without its loop asks for the running loop: a getpid() system call on Python 3.11.
        task = None if owner.loop is None else asyncio.current_task(owner.loop)
        if task is None:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("a Deadline must be used inside a task")
            owner.loop = task.get_loop()
        self._task = task
        self._cancelling = task.cancelling()
        owner.active[self] = None
        if owner._handle is None:
            owner.ensure_sweeping()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._owner.active.pop(self, None)
        if self.fired:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    # ``async with`` works too; the plain ``with`` spares the two coroutines on the hot path.
    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def fire(self) -> None:
        self.fired = True
        self._owner.active.pop(self, None)
        assert self._task is not None
        self._task.cancel()


class Deadlines:
    """The deadlines in force in one event loop, swept every ``resolution`` seconds while any is active.

    A deadline is a time of ``now()``: the event loop's time unless told otherwise (a ``Clock``'s ``loop_time``).
    """

    def __init__(self, resolution: float = 0.05, now: Callable[[], float] | None = None) -> None:
        self.resolution = resolution
        self._now = now
        self.active: dict[Deadline, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop of the first deadline entered

    def at(self, when: float) -> Deadline:
        return Deadline(self, when)

    def ensure_sweeping(self) -> None:
        if self._handle is None:
            loop = self.loop or asyncio.get_running_loop()
            self._handle = loop.call_later(self.resolution, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        if not self.active:
            return
        now = self._now() if self._now is not None else asyncio.get_running_loop().time()
        for deadline in [d for d in self.active if d.when <= now]:
            deadline.fire()
        self.ensure_sweeping()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
