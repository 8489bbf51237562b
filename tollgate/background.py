"""Background tasks: one way to start a named task of the gateway and to stop it (cancel, then wait until it ended)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["BackgroundTask"]


class BackgroundTask:
    """A task that runs beside the requests (a flusher, a watcher, a prober): :meth:`start` it, then :meth:`stop` it.

    ``run`` makes the coroutine, usually a loop that only ends when cancelled.
    The task is named (``name`` shows in task dumps and in asyncio's debug
    messages) and held here, so it is never garbage collected while it runs.
    It starts with an empty context: one started while a request is served
    does not take that request's context variables (its log lines' request
    id, its trace) along for the rest of its life.
    """

    __slots__ = ("name", "_run", "_task")

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._run = run
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start it in the running event loop; while it runs, another call does nothing."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=self.name, context=contextvars.Context()
            )

    async def stop(self) -> None:
        """Cancel it and wait until it has ended; then it may be started again."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def join(self) -> None:
        """Wait until it ends by itself (a worker told to finish its work), without cancelling it."""
        task, self._task = self._task, None
        if task is not None:
            await task
