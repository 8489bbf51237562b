"""Circuit breaker logic on a manual clock: when it opens, how long it stays open, how many probes it lets through."""

from __future__ import annotations

from tollgate.clock import ManualClock
from tollgate.config.resilience import BreakerPolicy
from tollgate.routing.breaker import CLOSED, HALF_OPEN, OPEN, REFUSED, Breaker

POLICY = BreakerPolicy(
    consecutive_failures=3,
    error_rate=0.5,
    window=10.0,
    min_calls=10,
    cool_down=5.0,
    cool_down_max=40.0,
    half_open_probes=2,
)


def _breaker(policy: BreakerPolicy = POLICY) -> tuple[Breaker, ManualClock]:
    clock = ManualClock()
    return Breaker("test", policy, clock), clock


def _fail(b: Breaker, n: int = 1) -> None:
    for _ in range(n):
        b.failure(b.acquire())


def test_opens_after_n_consecutive_failures_and_not_before() -> None:
    b, _ = _breaker()
    _fail(b, 2)
    assert b.state == CLOSED
    _fail(b)
    assert b.state == OPEN
    assert b.acquire() == REFUSED
    assert b.transitions == {"closed->open": 1}


def test_a_success_resets_the_consecutive_count() -> None:
    b, _ = _breaker()
    _fail(b, 2)
    b.success(b.acquire())
    _fail(b, 2)
    assert b.state == CLOSED


def test_error_rate_over_the_window_opens_only_with_min_calls() -> None:
    b, _ = _breaker(BreakerPolicy(consecutive_failures=100, error_rate=0.5, window=10.0, min_calls=10))
    for _ in range(4):  # 4 failures, 4 successes, alternating: 50 % but only 8 calls
        _fail(b)
        b.success(b.acquire())
    assert b.state == CLOSED
    b.success(b.acquire())
    _fail(b)  # 10 calls, 5 failures
    assert b.state == OPEN


def test_failures_older_than_the_window_do_not_count() -> None:
    policy = BreakerPolicy(consecutive_failures=100, error_rate=0.5, window=10.0, min_calls=5)
    states = []
    for wait in (0.0, 11.0):
        b, clock = _breaker(policy)
        _fail(b, 4)
        clock.advance(wait)
        for _ in range(5):
            b.success(b.acquire())
        _fail(b)
        states.append(b.state)
    assert states == [OPEN, CLOSED]  # 5 of 10 failed vs. 1 of 6 once the first four aged out


def test_slow_call_rate_opens_the_breaker() -> None:
    b, _ = _breaker(
        BreakerPolicy(consecutive_failures=100, error_rate=0.0, slow_call_rate=0.5, slow_call_duration=2.0, min_calls=4)
    )
    for _ in range(3):
        b.success(b.acquire(), 0.1)
    assert b.state == CLOSED
    for _ in range(3):
        b.success(b.acquire(), 3.0)
    assert b.state == OPEN


def test_stays_open_for_the_cool_down_then_admits_exactly_k_probes() -> None:
    b, clock = _breaker()
    _fail(b, 3)
    clock.advance(4.9)
    assert b.acquire() == REFUSED
    clock.advance(0.2)
    permits = [b.acquire() for _ in range(50)]
    assert b.state == HALF_OPEN
    assert sum(1 for p in permits if p) == POLICY.half_open_probes


def test_k_successful_probes_close_it() -> None:
    b, clock = _breaker()
    _fail(b, 3)
    clock.advance(5.0)
    probes = [b.acquire(), b.acquire()]
    b.success(probes[0])
    assert b.state == HALF_OPEN
    b.success(probes[1])
    assert b.state == CLOSED
    assert b.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}


def test_a_failed_probe_reopens_with_a_doubled_cool_down_up_to_the_max() -> None:
    b, clock = _breaker()
    _fail(b, 3)
    cool_downs = []
    for _ in range(5):
        opened = clock.monotonic()
        cool_downs.append(b.open_until - opened)
        clock.advance(b.open_until - opened)
        b.failure(b.acquire())
    assert cool_downs == [5.0, 10.0, 20.0, 40.0, 40.0]


def test_tripping_again_soon_after_closing_grows_the_cool_down_and_a_calm_spell_resets_it() -> None:
    b, clock = _breaker()
    _fail(b, 3)
    clock.advance(5.0)
    b.success(b.acquire())
    b.success(b.acquire())
    assert b.state == CLOSED
    _fail(b, 3)
    assert b.open_until - clock.monotonic() == 10.0
    clock.advance(10.0)
    b.success(b.acquire())
    b.success(b.acquire())
    clock.advance(41.0)  # closed longer than cool_down_max
    _fail(b, 3)
    assert b.open_until - clock.monotonic() == 5.0


def test_an_abandoned_probe_gives_its_slot_back() -> None:
    b, clock = _breaker()
    _fail(b, 3)
    clock.advance(5.0)
    p1, p2 = b.acquire(), b.acquire()
    assert b.acquire() == REFUSED
    b.abandon(p1)
    assert b.acquire()
    assert p2


def test_a_verdict_from_before_a_transition_is_ignored() -> None:
    b, clock = _breaker()
    stale = b.acquire()  # admitted while closed
    _fail(b, 3)
    clock.advance(5.0)
    probe = b.acquire()
    b.failure(stale)  # arrives during half-open: must not count as the probe's verdict
    assert b.state == HALF_OPEN
    b.success(probe)
    b.success(b.acquire())
    assert b.state == CLOSED


def test_disabled_breaker_never_opens() -> None:
    b, _ = _breaker(BreakerPolicy(enabled=False, consecutive_failures=1))
    _fail(b, 50)
    assert b.state == CLOSED and b.acquire()
