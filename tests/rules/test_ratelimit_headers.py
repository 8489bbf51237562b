"""Rate-limit headers: OpenAI's names and format, the IETF fields, the tightest limit per unit."""

from __future__ import annotations

import pytest

from tollgate.edge.ratelimit_headers import HeaderLimit, format_reset, ratelimit_headers, retry_after_seconds


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
