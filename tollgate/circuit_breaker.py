"""The circuit breaker, one for deployments and stores: closed → open → half-open (k probes) → closed, on a given clock.

* **closed**: every call passes. It trips open after ``failures`` failures in
  a row, or when, over a sliding window (10 buckets) holding at least
  ``min_calls`` calls, the error rate or the slow-call rate reaches its
  threshold (both off by default).
* **open**: every call is refused for the cool-down. It starts at
  ``open_seconds`` and doubles, up to ``max_open_seconds``, with each failed
  probe and with each trip that follows the last closing by less than
  ``calm_seconds`` (0 by default: a trip from closed starts again from
  ``open_seconds``).
* **half-open**: exactly ``probes`` calls are admitted as probes; the rest are
  refused (they go elsewhere, or fail at once: no stampede). A failed probe
  re-opens at once with a longer cool-down; when all probes succeeded it
  closes. A probe abandoned without a verdict gives its slot back.

A caller that tracks its calls one by one (a deployment's attempts) passes
the permit :meth:`CircuitBreaker.acquire` gave back with the verdict: permits
carry the breaker's epoch, so a verdict from a call admitted before a
transition does not count in the new state. A caller that does not (a store,
whose round trips carry many calls) reports without a permit: the verdict
counts in the state the breaker is in when it arrives: a normal call's when
closed, the probe's when half-open; while open, a late failure is ignored and
a late success closes the circuit (the other end answers again).

A named breaker logs its transitions to the ``tollgate.breaker`` logger.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CLOSED",
    "DEFAULT_SETTINGS",
    "HALF_OPEN",
    "OPEN",
    "REFUSED",
    "STATE_CODES",
    "BreakerSettings",
    "CircuitBreaker",
]

log = logging.getLogger("tollgate.breaker")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
# A state as a number, for a gauge: higher is worse, so ``max`` over processes or deployments shows the worst.
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
REFUSED = 0  # the permit of a refused call (falsy); an admitted call's permit is truthy
_UNTRACKED = -1  # the permit of a verdict reported without one; never an admitted call's (epoch >= 0)
_NORMAL = 1
_PROBE = 2
_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens, for how long, and how it probes; the defaults are those of a limiter store.

    ``failures``            consecutive failures that open it
    ``open_seconds``        the first cool-down
    ``max_open_seconds``    the longest cool-down (never shorter than ``open_seconds``)
    ``calm_seconds``        closed at least this long, a new trip starts again from ``open_seconds``;
                            sooner, it doubles the last cool-down
    ``probes``              calls admitted in half-open; all of them must succeed to close it
    ``error_rate``          share of failed calls over the window that opens it (0: not judged)
    ``slow_call_rate``      share of slow calls over the window that opens it (0: not judged)
    ``slow_call_duration``  seconds from which a successful call counts as slow
    ``window``              seconds the rates are judged over
    ``min_calls``           calls the window must hold before a rate is judged
    ``enabled``             False: it counts, never opens
    """

    failures: int = 3
    open_seconds: float = 0.1
    max_open_seconds: float = 2.0
    calm_seconds: float = 0.0
    probes: int = 1
    error_rate: float = 0.0
    slow_call_rate: float = 0.0
    slow_call_duration: float = 30.0
    window: float = 30.0
    min_calls: int = 20
    enabled: bool = True


DEFAULT_SETTINGS = BreakerSettings()


class _Monotonic(Protocol):
    """What a breaker reads of a ``tollgate.clock.Clock`` (a sibling at the bottom layer, not imported here)."""

    def monotonic(self) -> float: ...


class CircuitBreaker:
    """One breaker: :meth:`acquire` a permit before a call, report :meth:`success`, :meth:`failure` or
    :meth:`abandon` after it. ``state``, ``transitions`` (counts of "closed->open" etc.) and ``history``
    (the recent transitions with their time and reason) are for metrics and the admin API."""

    __slots__ = (
        "name",
        "settings",
        "state",
        "epoch",
        "consecutive",
        "open_for",
        "open_until",
        "level",
        "tripped",
        "closed_at",
        "probes_admitted",
        "probes_passed",
        "transitions",
        "history",
        "_monotonic",
        "_cap",
        "_calls",
        "_failures",
        "_slow",
        "_bucket",
        "_width",
    )

    def __init__(self, clock: _Monotonic, settings: BreakerSettings = DEFAULT_SETTINGS, name: str = "") -> None:
        self.name = name
        self._monotonic = clock.monotonic
        self.state = CLOSED
        self.epoch = 0
        self.consecutive = 0
        self.open_for = settings.open_seconds  # the cool-down of this opening (while closed: the first one)
        self.open_until = 0.0
        self.level = 0  # doublings of the cool-down
        self.tripped = False
        self.closed_at = self._monotonic()
        self.probes_admitted = 0
        self.probes_passed = 0
        self.transitions: dict[str, int] = {}
        self.history: deque[tuple[float, str, str, str]] = deque(maxlen=64)
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._slow = [0] * _BUCKETS
        self._bucket = 0
        self.settings = settings
        self._cap = max(settings.max_open_seconds, settings.open_seconds)
        self._width = settings.window / _BUCKETS

    def reconfigure(self, settings: BreakerSettings) -> None:
        """New settings (a reload); the state carries over, the rate window starts again when they changed."""
        if settings != self.settings:
            self.settings = settings
            self._cap = max(settings.max_open_seconds, settings.open_seconds)
            self._width = settings.window / _BUCKETS
            self._reset_window()

    # -- admission ------------------------------------------------------------
    def acquire(self) -> int:
        """A permit (truthy) for one call, or ``REFUSED``; in half-open, a permit makes the call a probe."""
        state = self.state
        if state is CLOSED:
            return self.epoch << 2 | _NORMAL
        if state is OPEN:
            if self._monotonic() < self.open_until:
                return REFUSED
            self._move(HALF_OPEN, "cool-down over")
        if self.probes_admitted < self.settings.probes:
            self.probes_admitted += 1
            return self.epoch << 2 | _PROBE
        return REFUSED

    def would_admit(self) -> bool:
        """Whether :meth:`acquire` would give a permit now (without taking it)."""
        state = self.state
        if state is CLOSED:
            return True
        if state is OPEN:
            return self._monotonic() >= self.open_until
        return self.probes_admitted < self.settings.probes

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state is not OPEN:
            return 0.0
        return max(0.0, self.open_until - self._monotonic())

    # -- verdicts -------------------------------------------------------------
    def success(self, permit: int = _UNTRACKED, duration: float = 0.0) -> None:
        """The call succeeded in ``duration`` seconds (slow from ``slow_call_duration``)."""
        if permit >> 2 != self.epoch:
            if permit == _UNTRACKED:
                self._untracked(True, duration, "")
            return
        if permit & _PROBE:
            self.probes_passed += 1
            if self.probes_passed >= self.settings.probes:
                self._move(CLOSED, f"{self.probes_passed} probe(s) succeeded")
            return
        self.consecutive = 0
        settings = self.settings
        slow = duration >= settings.slow_call_duration
        self._count(False, slow)
        if slow and settings.slow_call_rate:
            self._judge_rates()

    def failure(self, permit: int = _UNTRACKED, reason: str = "failure") -> None:
        """The call failed (an error, or no answer in time)."""
        if permit >> 2 != self.epoch:
            if permit == _UNTRACKED:
                self._untracked(False, 0.0, reason)
            return
        if permit & _PROBE:
            self.level += 1
            self._move(OPEN, f"half-open probe failed: {reason}")
            return
        self.consecutive += 1
        self._count(True, False)
        if self.consecutive >= self.settings.failures:
            self._trip(f"{self.consecutive} consecutive failures, last: {reason}")
        else:
            self._judge_rates()

    def abandon(self, permit: int = _UNTRACKED) -> None:
        """The call ended without a verdict (the client left; it never reached the other end): a probe's slot
        is given back."""
        if permit >> 2 == self.epoch:
            if permit & _PROBE and self.probes_admitted > 0:
                self.probes_admitted -= 1
        elif permit == _UNTRACKED and self.state is HALF_OPEN and self.probes_admitted > 0:
            self.probes_admitted -= 1

    # -- internals ------------------------------------------------------------
    def _untracked(self, succeeded: bool, duration: float, reason: str) -> None:
        """A verdict without a permit: as from a call admitted in the current state (see the module's text)."""
        state = self.state
        if state is OPEN:
            if succeeded:
                self._move(CLOSED, "a call succeeded while open")
            return
        permit = self.epoch << 2 | (_NORMAL if state is CLOSED else _PROBE)
        if succeeded:
            self.success(permit, duration)
        else:
            self.failure(permit, reason)

    def _count(self, failed: bool, slow: bool) -> None:
        index = int(self._monotonic() / self._width)
        if index != self._bucket:
            gap = index - self._bucket
            for i in range(1, min(gap, _BUCKETS) + 1):
                b = (self._bucket + i) % _BUCKETS
                self._calls[b] = self._failures[b] = self._slow[b] = 0
            self._bucket = index
        b = index % _BUCKETS
        self._calls[b] += 1
        if failed:
            self._failures[b] += 1
        if slow:
            self._slow[b] += 1

    def _judge_rates(self) -> None:
        settings = self.settings
        if not settings.enabled:
            return
        calls = sum(self._calls)
        if calls < settings.min_calls:
            return
        if settings.error_rate and sum(self._failures) >= settings.error_rate * calls:
            self._trip(f"error rate {sum(self._failures) / calls:.0%} over {calls} calls")
        elif settings.slow_call_rate and sum(self._slow) >= settings.slow_call_rate * calls:
            self._trip(f"slow-call rate {sum(self._slow) / calls:.0%} over {calls} calls")

    def _trip(self, reason: str) -> None:
        if not self.settings.enabled:
            return
        if self.tripped and self._monotonic() - self.closed_at < self.settings.calm_seconds:
            self.level += 1  # tripped again soon after closing: a longer cool-down
        else:
            self.level = 0  # first trip, or after a calm spell: the first cool-down
        self.tripped = True
        self._move(OPEN, reason)

    def _reset_window(self) -> None:
        for i in range(_BUCKETS):
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self.consecutive = 0

    def _move(self, to: str, reason: str) -> None:
        now = self._monotonic()
        frm = self.state
        self.state = to
        self.epoch += 1
        if to is OPEN:
            self.open_for = min(self._cap, self.settings.open_seconds * (2 ** min(self.level, 30)))
            self.open_until = now + self.open_for
            reason = f"{reason}; cool-down {self.open_for:g}s"
        elif to is HALF_OPEN:
            self.probes_admitted = 0
            self.probes_passed = 0
        else:
            self.closed_at = now
            self.open_for = self.settings.open_seconds
            self._reset_window()
        key = f"{frm}->{to}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.history.append((now, frm, to, reason))
        if self.name:
            log.log(
                logging.WARNING if to is OPEN else logging.INFO,
                "breaker %s: %s -> %s at t=%.3f (%s)",
                self.name,
                frm,
                to,
                now,
                reason,
            )
