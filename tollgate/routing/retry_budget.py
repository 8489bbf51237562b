"""Retry budget: retries over a sliding window stay within ``floor + ratio × requests``, so a failing provider is not hit harder."""

from __future__ import annotations

from tollgate.clock import Clock
from tollgate.config.resilience import RetryPolicy

__all__ = ["RetryBudget"]

_BUCKETS = 10


class RetryBudget:
    """Gateway-wide; lives on ``GatewayState`` so a reload keeps its counts. ``granted``/``refused`` are for metrics."""

    __slots__ = ("clock", "ratio", "floor", "_width", "_requests", "_retries", "_bucket", "granted", "refused")

    def __init__(self, policy: RetryPolicy, clock: Clock) -> None:
        self.clock = clock
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._bucket = 0
        self.granted = 0
        self.refused = 0
        self.ratio = policy.budget_ratio
        self.floor = policy.budget_floor
        self._width = policy.budget_window / _BUCKETS

    def configure(self, policy: RetryPolicy) -> None:
        self.ratio = policy.budget_ratio
        self.floor = policy.budget_floor
        width = policy.budget_window / _BUCKETS
        if width != self._width:
            self._width = width
            self._requests = [0] * _BUCKETS
            self._retries = [0] * _BUCKETS

    def request(self) -> None:
        """Count one client request (every request earns ``ratio`` of a retry)."""
        self._requests[self._roll()] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it now."""
        b = self._roll()
        if sum(self._retries) + 1 > self.floor + self.ratio * sum(self._requests):
            self.refused += 1
            return False
        self._retries[b] += 1
        self.granted += 1
        return True

    def _roll(self) -> int:
        index = int(self.clock.monotonic() / self._width)
        if index != self._bucket:
            for i in range(1, min(index - self._bucket, _BUCKETS) + 1):
                b = (self._bucket + i) % _BUCKETS
                self._requests[b] = self._retries[b] = 0
            self._bucket = index
        return index % _BUCKETS
