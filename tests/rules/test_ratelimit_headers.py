"""Rate-limit headers: OpenAI's names and format, the IETF fields, the tightest limit per unit."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from tollgate.edge.ratelimit_headers import (
    HeaderLimit,
    HeaderPlan,
    format_reset,
    ratelimit_headers,
    retry_after_seconds,
)


@pytest.mark.parametrize(
    ("ms", "text"), [(20, "20ms"), (1000, "1s"), (1500, "1.5s"), (360_000, "6m0s"), (3_723_000, "1h2m3s"), (-5, "0ms")]
)
def test_reset_uses_openai_duration_format(ms: int, text: str) -> None:
    assert format_reset(ms) == text


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert retry_after_seconds(1) == "1"
    assert retry_after_seconds(1001) == "2"
    assert retry_after_seconds(0) == "1"


def test_headers_report_the_tightest_request_and_token_limits() -> None:
    headers = ratelimit_headers(
        [
            HeaderLimit("rpm", "requests", 100, 40, 30_000, 60_000),
            HeaderLimit("rph", "requests", 1000, 7, 1_800_000, 3_600_000),
            HeaderLimit("tpm", "tokens", 100_000, 90_000, 10_000, 60_000),
        ]
    )
    assert headers["x-ratelimit-limit-requests"] == "1000"
    assert headers["x-ratelimit-remaining-requests"] == "7"
    assert headers["x-ratelimit-reset-requests"] == "30m0s"
    assert headers["x-ratelimit-remaining-tokens"] == "90000"
    assert headers["RateLimit-Policy"] == '"rph";q=1000;w=3600, "tpm";q=100000;w=60'
    assert headers["RateLimit"] == '"rph";r=7;t=1800, "tpm";r=90000;t=10'


def test_no_limits_no_headers() -> None:
    assert ratelimit_headers([]) == {}


class _State(NamedTuple):
    limit: int
    remaining: int
    reset_ms: int


def test_a_header_plan_writes_what_ratelimit_headers_writes_for_the_same_limits() -> None:
    limits = [
        HeaderLimit("rpm", "requests", 100, 40, 30_000, 60_000),
        HeaderLimit("tpm", "tokens", 100_000, 90_000, 10_500, 60_000),
        HeaderLimit("rph", "requests", 1000, 40, 20_000, 3_600_000),  # ties rpm on remaining, resets sooner
        HeaderLimit("rpd", "requests", 5000, 40, 20_000, 86_400_000),  # ties rph exactly: the first one wins
        HeaderLimit("monthly", "requests", 10**9, -3, 999, 0),  # overdrawn, no window: reported as 0 left
    ]
    plan = HeaderPlan((i + 1, HeaderLimit(h.name, h.unit, h.limit, 0, 0, h.window_ms)) for i, h in enumerate(limits))
    states = [_State(0, 0, 0)] + [_State(h.limit, h.remaining, h.reset_ms) for h in limits]  # position 0: not shown
    assert plan.headers(states) == ratelimit_headers(limits)
    assert list(plan.headers(states)) == list(ratelimit_headers(limits))  # the same order, too
    # Written out, as the headers were before ratelimit_headers became a plan used once: the overdrawn limit is the
    # tightest request limit; without it, rph (ties rpm on remaining, resets sooner; ties rpd exactly, comes first).
    assert plan.headers(states) == {
        "x-ratelimit-limit-requests": "1000000000",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "999ms",
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": "90000",
        "x-ratelimit-reset-tokens": "10.5s",
        "RateLimit-Policy": '"monthly";q=1000000000, "tpm";q=100000;w=60',
        "RateLimit": '"monthly";r=0;t=1, "tpm";r=90000;t=11',
    }
    assert ratelimit_headers(limits[:4])["RateLimit"] == '"rph";r=40;t=20, "tpm";r=90000;t=11'
    only_tokens = HeaderPlan([(0, limits[1])])
    assert only_tokens.headers([states[2]]) == ratelimit_headers([limits[1]])
    assert HeaderPlan([]).headers([]) == {}


def test_a_header_plan_reports_the_limit_a_fail_mode_answered_with() -> None:
    plan = HeaderPlan([(0, HeaderLimit("rpm", "requests", 100, 0, 0, 60_000))])
    local_share = HeaderLimit("rpm", "requests", 25, 20, 1_000, 60_000)  # the embedded engine's share of 4 workers
    assert plan.headers([_State(25, 20, 1_000)]) == ratelimit_headers([local_share])


@pytest.mark.parametrize("ms", [0, 1, 999, 1000, 1001, 1010, 1100, 59_999, 60_000, 61_500, 3_600_000])
def test_reset_format_of_whole_milliseconds_matches_the_float_formatting(ms: int) -> None:
    seconds = ms / 1000
    expected = (
        f"{ms}ms"
        if ms < 1000
        else format_reset(float(ms))
        if ms >= 60_000
        else f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    )
    assert format_reset(ms) == expected


def test_resets_of_a_minute_or_more_are_the_same_text_whether_remembered_or_not() -> None:
    samples = [60_000, 60_999, 61_000, 3_599_999, 3_600_000, 86_399_999, 2_255_544_134, 34_560_000_000]
    samples += [60_000 + 7_919 * i for i in range(500)]
    for ms in samples:
        first = format_reset(ms)  # written, then remembered by its second
        whole = int(ms / 1000)
        hours, rest = divmod(whole, 3600)
        expected = f"{hours}h{rest // 60}m{rest % 60}s" if hours else f"{rest // 60}m{rest % 60}s"
        assert first == expected == format_reset(ms) == format_reset(float(ms)), ms
