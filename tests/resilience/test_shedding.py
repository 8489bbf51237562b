"""Load shedding: the lowest priority goes first and the top priority keeps its reserved share."""

from __future__ import annotations

import pytest

from tollgate.config.resilience import SheddingPolicy
from tollgate.errors import Overloaded
from tollgate.policy.shedding import Shedder


def _fill(shedder: Shedder, priority: int, n: int) -> int:
    """Admit up to n requests of one priority; how many got in."""
    admitted = 0
    for _ in range(n):
        try:
            shedder.enter()
            shedder.admit(priority)
        except Overloaded:
            shedder.leave()
            break
        admitted += 1
    return admitted


def test_low_priority_cannot_take_the_reserved_share() -> None:
    shedder = Shedder(SheddingPolicy(max_inflight=100, reserved_share=0.2, top_priority=1))
    assert _fill(shedder, 0, 1000) == 80
    assert _fill(shedder, 1, 1000) == 20
    assert shedder.shed == {0: 1, 1: 1}


def test_lower_classes_are_refused_first_with_three_classes() -> None:
    shedder = Shedder(SheddingPolicy(max_inflight=100, reserved_share=0.2, top_priority=2))
    assert _fill(shedder, 0, 1000) == 40
    assert _fill(shedder, 1, 1000) == 40
    assert _fill(shedder, 2, 1000) == 20


def test_refusal_is_503_material_with_retry_after() -> None:
    shedder = Shedder(SheddingPolicy(max_inflight=1, retry_after=2.0))
    shedder.enter()
    shedder.admit(5)
    with pytest.raises(Overloaded) as info:
        shedder.enter()  # even the top priority cannot get in: refused before any work
    assert (
        info.value.headers == {"Retry-After": "2", "retry-after-ms": "2000"} and info.value.code == "gateway_overloaded"
    )


def test_loop_lag_sheds_low_priority_before_the_top() -> None:
    shedder = Shedder(SheddingPolicy(loop_lag=0.1, reserved_share=0.2, top_priority=1))
    shedder.enter()
    shedder.lag = 0.085
    with pytest.raises(Overloaded):
        shedder.admit(0)
    shedder.admit(1)
    shedder.lag = 0.1
    with pytest.raises(Overloaded):
        shedder.admit(1)


def test_disabled_shedder_never_refuses() -> None:
    shedder = Shedder(SheddingPolicy())
    assert _fill(shedder, 0, 10_000) == 10_000
