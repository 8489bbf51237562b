"""Proactive fallback, hotspot detection and the attempt loop's failure verdicts, on a manual clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tollgate.clock import ManualClock
from tollgate.config.resilience import HotspotPolicy, ProactiveFallback, RetryPolicy
from tollgate.errors import RateLimited, UpstreamBadResponse, UpstreamStatus, UpstreamTimeout
from tollgate.routing.degradation import Hotspots, ProactiveFallbacks
from tollgate.routing.verdicts import judge


def test_a_model_past_its_error_rate_is_diverted_for_the_hold_then_comes_back() -> None:
    clock = ManualClock()
    pf = ProactiveFallbacks(ProactiveFallback(error_rate=0.5, window=10.0, min_calls=10, hold=30.0), clock)
    for _ in range(6):
        pf.observe("m", False, 0.1)
    for _ in range(4):
        pf.observe("m", True, 0.0)
    assert not pf.diverted("m")  # 4 of 10
    pf.observe("m", True, 0.0)
    pf.observe("m", True, 0.0)  # 6 of 12
    assert pf.diverted("m") and pf.diversions == {"m": 1}
    clock.advance(30.0)
    assert not pf.diverted("m")


def test_a_model_past_its_p95_latency_is_diverted() -> None:
    pf = ProactiveFallbacks(ProactiveFallback(p95_latency=2.0, min_calls=20), ManualClock())
    for i in range(20):
        pf.observe("m", False, 3.0 if i % 4 == 0 else 0.5)  # 25 % slow: p95 is slow
    assert pf.diverted("m")


def test_proactive_fallback_off_by_default() -> None:
    pf = ProactiveFallbacks(ProactiveFallback(), ManualClock())
    for _ in range(100):
        pf.observe("m", True, 0.0)
    assert not pf.diverted("m")


def test_hotspot_is_flagged_against_its_own_baseline_and_held_to_the_stricter_limit() -> None:
    clock = ManualClock()
    hs = Hotspots(
        HotspotPolicy(enabled=True, factor=5.0, min_rate=1.0, window=10.0, baseline=100.0, limit_rate=2.0, hold=60.0),
        clock,
    )
    for _ in range(30):  # a steady 2/s for a minute builds the baseline
        hs.hit("t", "m")
        clock.advance(0.5)
    assert not hs.flagged("t", "m")
    refused = 0
    for _ in range(200):  # then 100/s
        try:
            hs.hit("t", "m")
        except RateLimited as exc:
            refused += 1
            assert exc.code == "hotspot_limited"
        clock.advance(0.01)
    assert hs.flagged("t", "m") and hs.flags == {"t/m": 1}
    assert refused > 150  # at most 2 per second got through while flagged
    hs.hit("other", "m")  # another tenant is not affected
    assert not hs.flagged("other", "m")


ROUTE = SimpleNamespace(context_fallbacks=("big",), fallback_on_status=frozenset({429}))
POLICY = RetryPolicy(statuses=frozenset({500, 503}), on_timeout=False)


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (
            UpstreamStatus("u", 400, b'{"error":{"code":"context_length_exceeded"}}', "application/json", None),
            "context",
        ),
        (UpstreamStatus("u", 400, b'{"error":{"code":"invalid"}}', "application/json", None), "relay"),
        (UpstreamStatus("u", 429, b"{}", "application/json", 1.0), "fallback"),
        (UpstreamStatus("u", 503, b"{}", "application/json", None), "retry"),
        (UpstreamStatus("u", 502, b"{}", "application/json", None), "relay"),
        (UpstreamTimeout("slow"), "relay"),
        (UpstreamBadResponse("refused", code="upstream_connect_error"), "retry"),
    ],
)
def test_failure_verdicts(exc: Exception, verdict: str) -> None:
    assert judge(exc, ROUTE, POLICY) == verdict  # type: ignore[arg-type]
