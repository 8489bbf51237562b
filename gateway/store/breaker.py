"""A circuit breaker for a store: stop waiting on a dead Redis, probe it now and then, recover alone."""

from __future__ import annotations

from dataclasses import dataclass

from ..clock import Clock

__all__ = ["BreakerSettings", "CircuitBreaker", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """``failures`` consecutive failed calls open the circuit for ``open_seconds``; then one probe may pass."""

    failures: int = 3
    open_seconds: float = 1.0


class CircuitBreaker:
    """closed --(N failures in a row)--> open --(open_seconds)--> half-open --probe ok--> closed
                                          ^------------------- probe failed ------------'

    While open, ``allow()`` is False at once (no waiting on the store). In
    half-open exactly one caller is let through as the probe; the others are
    refused until it reports. Time comes from the injected clock.
    """

    __slots__ = ("_clock", "_settings", "_failures", "_opened_at", "_probing", "state", "opened")

    def __init__(self, clock: Clock, settings: BreakerSettings = BreakerSettings()) -> None:
        self._clock = clock
        self._settings = settings
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = CLOSED
        self.opened = 0  # times the circuit opened (a metric)

    def allow(self) -> bool:
        """May a call go to the store now? (In half-open, True makes the caller the probe.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock.monotonic() - self._opened_at < self._settings.open_seconds:
                return False
            self.state = HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._probing = False
        self.state = CLOSED

    def failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self.state == HALF_OPEN or self._failures >= self._settings.failures:
            if self.state != OPEN:
                self.opened += 1
            self.state = OPEN
            self._opened_at = self._clock.monotonic()
