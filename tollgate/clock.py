"""Injected time: a ``Clock`` protocol, the system clock, and a manual clock for tests."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where logic that tests need to control reads the time.

    ``monotonic()`` (seconds, arbitrary origin) times local things: caches,
    circuit breakers, budgets. ``time()`` / ``time_ns()`` (since the Unix epoch)
    is wall time: the embedded store answers ``TIME`` from it.
    """

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def time_ns(self) -> int: ...


class SystemClock:
    """The real clocks of the operating system."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def time_ns(self) -> int:
        return time.time_ns()


class ManualClock:
    """A clock that only moves when told to; wall and monotonic time move together.

    Wall time is kept in integer nanoseconds so microsecond values survive
    exactly (a float of seconds since 1970 cannot hold every microsecond).
    """

    __slots__ = ("_wall_ns", "_mono_ns")

    def __init__(self, wall: float = 1_700_000_000.0, *, wall_ns: int | None = None) -> None:
        self._wall_ns = wall_ns if wall_ns is not None else round(wall * 1e9)
        self._mono_ns = 1_000 * 1_000_000_000

    def monotonic(self) -> float:
        return self._mono_ns / 1e9

    def time(self) -> float:
        return self._wall_ns / 1e9

    def time_ns(self) -> int:
        return self._wall_ns

    def advance(self, seconds: float) -> None:
        """Move both clocks forward (never backward) by ``seconds``."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        step = round(seconds * 1e9)
        self._wall_ns += step
        self._mono_ns += step

    def set_wall_ns(self, wall_ns: int) -> None:
        """Jump wall time to ``wall_ns``; monotonic time moves by the same amount if forward."""
        if wall_ns > self._wall_ns:
            self._mono_ns += wall_ns - self._wall_ns
        self._wall_ns = wall_ns
