"""The retry budget on a manual clock: retries stay within floor + ratio x requests over the window."""

from __future__ import annotations

from tollgate.clock import ManualClock
from tollgate.config.resilience import RetryPolicy
from tollgate.routing.retry_budget import RetryBudget


def test_retries_are_capped_at_floor_plus_ratio_of_requests() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.2, budget_floor=3, budget_window=10.0), ManualClock())
    for _ in range(100):
        budget.request()
    granted = sum(budget.try_retry() for _ in range(100))
    assert granted == 3 + 20
    assert budget.refused == 100 - 23


def test_the_budget_refills_as_the_window_slides() -> None:
    clock = ManualClock()
    budget = RetryBudget(RetryPolicy(budget_ratio=0.1, budget_floor=0, budget_window=10.0), clock)
    for _ in range(10):
        budget.request()
    assert budget.try_retry()
    assert not budget.try_retry()
    clock.advance(11.0)
    assert not budget.try_retry()  # old requests no longer earn retries either
    for _ in range(10):
        budget.request()
    assert budget.try_retry()


def test_zero_ratio_and_floor_means_no_retries() -> None:
    budget = RetryBudget(RetryPolicy(budget_ratio=0.0, budget_floor=0), ManualClock())
    budget.request()
    assert not budget.try_retry()
