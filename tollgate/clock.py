"""Injected time: a ``Clock`` protocol, the system clock, and a manual clock for tests."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Where logic that tests need to control reads the time.

    ``monotonic()`` (seconds, arbitrary origin) times local things: caches,
    circuit breakers, budgets. ``loop_time()`` is the event loop's clock, the
    one of a request's times and deadlines (``RequestContext.started``, the
    upstream timeouts, the retry backoff, leases, stream timings), read many
    times per request. ``time()`` / ``time_ns()`` (since the Unix epoch) is
    wall time: the embedded store answers ``TIME`` from it.
    """

    def monotonic(self) -> float: ...

    def loop_time(self) -> float: ...

    def time(self) -> float: ...

    def time_ns(self) -> int: ...


class SystemClock:
    """The real clocks of the operating system.

    Loop time is CLOCK_MONOTONIC, the clock event loops run on (asyncio's
    ``loop.time()`` is ``time.monotonic()``; uvloop's is the same clock in
    whole milliseconds), read directly: it is one C call on the hot path.
    """

    __slots__ = ()

    # The C functions themselves, not methods calling them: a request reads these clocks a dozen times, and a
    # Python frame around each read cost more than the read.
    monotonic = staticmethod(time.monotonic)
    loop_time = staticmethod(time.monotonic)
    time_ns = staticmethod(time.time_ns)
    time = staticmethod(time.time)  # last: from here on, ``time`` in this class body is this attribute


_MONO_START_NS = 1_000 * 1_000_000_000


class ManualClock:
    """A clock that only moves when told to; wall and monotonic time move together.

    Wall time is kept in integer nanoseconds so microsecond values survive
    exactly (a float of seconds since 1970 cannot hold every microsecond).

    Loop time is the system's (see :class:`SystemClock`) plus every second
    :meth:`advance` added: a real event loop keeps running under a test
    (sockets, sleeps), and a deadline the gateway checks against
    ``loop_time()`` passes as soon as a test moves the clock beyond it.
    """

    __slots__ = ("_wall_ns", "_mono_ns")

    def __init__(self, wall: float = 1_700_000_000.0, *, wall_ns: int | None = None) -> None:
        self._wall_ns = wall_ns if wall_ns is not None else round(wall * 1e9)
        self._mono_ns = _MONO_START_NS

    def monotonic(self) -> float:
        return self._mono_ns / 1e9

    def loop_time(self) -> float:
        return time.monotonic() + (self._mono_ns - _MONO_START_NS) / 1e9

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
