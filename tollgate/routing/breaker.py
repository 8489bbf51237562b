"""Circuit breaker per deployment: closed → open → half-open (exactly k probes) → closed, on an injected clock.

* **closed**: every call passes. It trips open after ``consecutive_failures``
  failures in a row, or when, over a sliding window (10 buckets) holding at
  least ``min_calls`` calls, the error rate or the slow-call rate reaches its
  threshold.
* **open**: every call is refused for the cool-down, which starts at
  ``cool_down`` and doubles with each trip that follows another without a calm
  spell (closed for ``cool_down_max``) in between, up to ``cool_down_max``.
* **half-open**: exactly ``half_open_probes`` calls are admitted as probes; the
  rest are refused (they go elsewhere: no stampede). A failed probe re-opens at
  once with a longer cool-down; when all k probes succeeded it closes. A probe
  abandoned without a verdict (client left) gives its slot back.

Permits carry the breaker's epoch, so a verdict arriving from a call admitted
before a transition does not count in the new state.
"""

from __future__ import annotations

import logging
from collections import deque

from tollgate.clock import Clock
from tollgate.config.resilience import BreakerPolicy

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "REFUSED", "Breaker"]

log = logging.getLogger("tollgate.breaker")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
REFUSED = 0
_NORMAL = 1
_PROBE = 2
_BUCKETS = 10


class Breaker:
    __slots__ = (
        "name",
        "policy",
        "clock",
        "state",
        "epoch",
        "consecutive",
        "open_until",
        "level",
        "tripped",
        "closed_at",
        "probes_admitted",
        "probes_passed",
        "transitions",
        "history",
        "_calls",
        "_failures",
        "_slow",
        "_bucket",
        "_width",
    )

    def __init__(self, name: str, policy: BreakerPolicy, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.state = CLOSED
        self.epoch = 0
        self.consecutive = 0
        self.open_until = 0.0
        self.level = 0
        self.tripped = False
        self.closed_at = clock.monotonic()
        self.probes_admitted = 0
        self.probes_passed = 0
        # Counters for metrics: "closed->open" etc.; the recent transitions with their time and reason.
        self.transitions: dict[str, int] = {}
        self.history: deque[tuple[float, str, str, str]] = deque(maxlen=64)
        self._calls = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._slow = [0] * _BUCKETS
        self._bucket = 0
        self.policy = policy
        self._width = policy.window / _BUCKETS

    def configure(self, policy: BreakerPolicy) -> None:
        """A reload may change the policy; the state and its counts carry over."""
        if policy != self.policy:
            self.policy = policy
            self._width = policy.window / _BUCKETS
            self._reset_window()

    # -- admission ------------------------------------------------------------
    def acquire(self) -> int:
        """A permit (truthy) for one call, or ``REFUSED``."""
        state = self.state
        if state is CLOSED:
            return self.epoch << 2 | _NORMAL
        if state is OPEN:
            if self.clock.monotonic() < self.open_until:
                return REFUSED
            self._move(HALF_OPEN, "cool-down over")
        if self.probes_admitted < self.policy.half_open_probes:
            self.probes_admitted += 1
            return self.epoch << 2 | _PROBE
        return REFUSED

    def would_admit(self) -> bool:
        """Whether :meth:`acquire` would give a permit now (without taking it)."""
        state = self.state
        if state is CLOSED:
            return True
        if state is OPEN:
            return self.clock.monotonic() >= self.open_until
        return self.probes_admitted < self.policy.half_open_probes

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it would now)."""
        if self.state is not OPEN:
            return 0.0
        return max(0.0, self.open_until - self.clock.monotonic())

    # -- verdicts -------------------------------------------------------------
    def success(self, permit: int, duration: float = 0.0) -> None:
        if permit >> 2 != self.epoch:
            return
        if permit & _PROBE:
            self.probes_passed += 1
            if self.probes_passed >= self.policy.half_open_probes:
                self._move(CLOSED, f"{self.probes_passed} probe(s) succeeded")
            return
        self.consecutive = 0
        slow = duration >= self.policy.slow_call_duration
        self._count(False, slow)
        if slow and self.policy.slow_call_rate:
            self._judge_rates()

    def failure(self, permit: int, reason: str = "failure") -> None:
        if permit >> 2 != self.epoch:
            return
        if permit & _PROBE:
            self.level += 1
            self._move(OPEN, f"half-open probe failed: {reason}")
            return
        self.consecutive += 1
        self._count(True, False)
        if self.consecutive >= self.policy.consecutive_failures:
            self._trip(f"{self.consecutive} consecutive failures, last: {reason}")
        else:
            self._judge_rates()

    def abandon(self, permit: int) -> None:
        """The call ended without a verdict (the client left): a probe's slot is given back."""
        if permit >> 2 == self.epoch and permit & _PROBE and self.probes_admitted > 0:
            self.probes_admitted -= 1

    # -- internals ------------------------------------------------------------
    def _count(self, failed: bool, slow: bool) -> None:
        index = int(self.clock.monotonic() / self._width)
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
        policy = self.policy
        if not policy.enabled:
            return
        calls = sum(self._calls)
        if calls < policy.min_calls:
            return
        if policy.error_rate and sum(self._failures) >= policy.error_rate * calls:
            self._trip(f"error rate {sum(self._failures) / calls:.0%} over {calls} calls")
        elif policy.slow_call_rate and sum(self._slow) >= policy.slow_call_rate * calls:
            self._trip(f"slow-call rate {sum(self._slow) / calls:.0%} over {calls} calls")

    def _trip(self, reason: str) -> None:
        if not self.policy.enabled:
            return
        if self.tripped and self.clock.monotonic() - self.closed_at < self.policy.cool_down_max:
            self.level += 1  # tripped again soon after closing: a longer cool-down
        else:
            self.level = 0  # first trip, or after a calm spell: the base cool-down
        self.tripped = True
        self._move(OPEN, reason)

    def _reset_window(self) -> None:
        for i in range(_BUCKETS):
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self.consecutive = 0

    def _move(self, to: str, reason: str) -> None:
        now = self.clock.monotonic()
        frm = self.state
        self.state = to
        self.epoch += 1
        if to is OPEN:
            cool = min(self.policy.cool_down_max, self.policy.cool_down * (2 ** min(self.level, 30)))
            self.open_until = now + cool
            reason = f"{reason}; cool-down {cool:g}s"
        elif to is HALF_OPEN:
            self.probes_admitted = 0
            self.probes_passed = 0
        else:
            self.closed_at = now
            self._reset_window()
        key = f"{frm}->{to}"
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.history.append((now, frm, to, reason))
        log.log(
            logging.WARNING if to is OPEN else logging.INFO,
            "breaker %s: %s -> %s at t=%.3f (%s)",
            self.name,
            frm,
            to,
            now,
            reason,
        )
