"""A circuit breaker for a store: stop waiting on a dead Redis, probe it soon and then less often, recover alone."""

from __future__ import annotations

from dataclasses import dataclass

from tollgate.clock import Clock

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "BreakerSettings", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """``failures`` consecutive failed calls open the circuit for ``open_seconds``; then one probe may pass.

    Each failed probe doubles how long the circuit stays open, up to
    ``max_open_seconds``; a successful call brings it back to ``open_seconds``.
    A short stall is thus answered by the fail modes only while it lasts,
    and a store that stays down is not probed on every request.
    """

    failures: int = 3
    open_seconds: float = 0.1
    max_open_seconds: float = 2.0


class CircuitBreaker:
    """closed --(N failures in a row)--> open --(open_for)--> half-open --probe ok--> closed
                                          ^--- probe failed: open_for doubles (capped) ---'

    While open, ``allow()`` is False at once (no waiting on the store). In
    half-open exactly one caller is let through as the probe; the others are
    refused until it reports. Time comes from the injected clock.
    """

    __slots__ = ("_clock", "_settings", "_failures", "_opened_at", "_probing", "state", "opened", "open_for")

    def __init__(self, clock: Clock, settings: BreakerSettings = BreakerSettings()) -> None:
        self._clock = clock
        self._settings = settings
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = CLOSED
        self.opened = 0  # times the circuit opened (a metric)
        self.open_for = settings.open_seconds  # how long the circuit stays open this time

    def allow(self) -> bool:
        """May a call go to the store now? (In half-open, True makes the caller the probe.)"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock.monotonic() - self._opened_at < self.open_for:
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
        self.open_for = self._settings.open_seconds

    def not_tried(self) -> None:
        """A call that ``allow()`` let through never reached the store (it waited in the gateway's queue):
        no verdict; when it was the probe, the next caller probes instead."""
        self._probing = False

    def failure(self) -> None:
        """A call that reached the store failed (an error, or no answer within its budget)."""
        self._probing = False
        self._failures += 1
        if self.state == HALF_OPEN:  # the probe failed: stay away longer
            self.open_for = min(self.open_for * 2, max(self._settings.max_open_seconds, self._settings.open_seconds))
        elif self._failures < self._settings.failures or self.state == OPEN:
            return  # still closed; or a call sent before the circuit opened reports late
        else:
            self.open_for = self._settings.open_seconds
        self.opened += 1
        self.state = OPEN
        self._opened_at = self._clock.monotonic()
