"""A deployment's circuit breaker: the one :class:`~tollgate.circuit_breaker.CircuitBreaker`, set from the resilience policy.

It opens after ``consecutive_failures`` failures in a row, or on the error or
slow-call rate over ``window``; stays open for ``cool_down``, doubling up to
``cool_down_max`` with each failed probe and with each trip within
``cool_down_max`` of the last closing; then admits exactly
``half_open_probes`` probes, and closes when they all succeed. The attempt
loop passes each call's permit back with its verdict.
"""

from __future__ import annotations

from tollgate.circuit_breaker import CLOSED, HALF_OPEN, OPEN, REFUSED, BreakerSettings, CircuitBreaker
from tollgate.clock import Clock
from tollgate.config.resilience import BreakerPolicy

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "REFUSED", "Breaker"]


class Breaker(CircuitBreaker):
    """The breaker of one deployment (``name``: its key in the logs); a reload hands it the new policy."""

    __slots__ = ("policy",)

    def __init__(self, name: str, policy: BreakerPolicy, clock: Clock) -> None:
        super().__init__(clock, _settings(policy), name)
        self.policy = policy

    def configure(self, policy: BreakerPolicy) -> None:
        """A reload may change the policy; the state and its counts carry over."""
        if policy != self.policy:
            self.policy = policy
            self.reconfigure(_settings(policy))


def _settings(policy: BreakerPolicy) -> BreakerSettings:
    return BreakerSettings(
        failures=policy.consecutive_failures,
        open_seconds=policy.cool_down,
        max_open_seconds=policy.cool_down_max,
        calm_seconds=policy.cool_down_max,
        probes=policy.half_open_probes,
        error_rate=policy.error_rate,
        slow_call_rate=policy.slow_call_rate,
        slow_call_duration=policy.slow_call_duration,
        window=policy.window,
        min_calls=policy.min_calls,
        enabled=policy.enabled,
    )
