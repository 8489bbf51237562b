"""A stream whose request caps its output (``max_tokens`` and the like) is held to that cap in its estimate.

The provider stops the output at the request's cap, so text a little longer than the cap's tokens at four characters
a token is the estimate's error: a limit that holds the whole cap is then neither extended nor cut. An upstream that
does not keep to the cap shows it (more events with text than the cap's tokens, or more than twice the cap's worth
of text), and from there the stream is held to its limits by its text as before.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.rules.extend_calls import recording_limiter
from tollgate.limiter.spec import LimitSpec
from tollgate.policy.admission import Admission
from tollgate.policy.settlement import StreamBudget
from tollgate.upstream.estimates import completion_cap, requested_completion_tokens
from tollgate.upstream.sse import HOLD, PASS, EndStream
from tollgate.upstream.usage import UsageMonitor

PROMPT, CAP = 30, 16
RATES = (0.0, 150.3, 600.7)  # nanos a request, a prompt token, a completion token: not whole at most counts


def _spec(name: str, unit: str, limit: int, cost: int) -> LimitSpec:
    return LimitSpec(
        name=name, kind="sliding_window", limit=limit, cost=cost, unit=unit, scope_key=(("tenant", "a"),), tenant="a"
    )


async def _monitor(
    cap: int, room: int = 0, money_short: int = 0
) -> tuple[UsageMonitor, StreamBudget, Admission, list[Any]]:
    """A stream admitted with ``CAP`` completion tokens reserved on a tokens limit with ``room`` left past its
    reservation (cut when spent), an output tokens limit, and a money limit (its reservation ``money_short`` nanos
    short of what the cap costs); ``cap`` as the request names it."""
    limiter, asked = recording_limiter()
    nanos = math.ceil(RATES[0] + PROMPT * RATES[1] + CAP * RATES[2]) - money_short  # as admission reserves it
    limits = (
        (_spec("tpm", "tokens", PROMPT + CAP + room, PROMPT + CAP), True),
        (_spec("otpm", "output_tokens", 1_000_000, CAP), False),
        (_spec("spend", "nanos", 10**12, nanos), True),
    )
    decision = await limiter.admit([spec for spec, _ in limits])
    assert decision.allowed
    admission = Admission(
        decision=decision,
        prompt_estimate=PROMPT,
        completion_reserved=CAP,
        completion_cap=cap,
        stream_limits=limits,
        rates=RATES,
    )
    budget = StreamBudget(admission, limiter)
    return UsageMonitor(None, False, budget), budget, admission, asked  # type: ignore[arg-type]


async def _relay(monitor: UsageMonitor, admission: Admission, sizes: list[int]) -> list[Any]:
    """Each event's verdict (a hold covered, then judged again); the stream ends at a cut."""
    seen: list[Any] = []
    for chars in sizes:
        verdict = monitor.generated(chars)
        while verdict == HOLD:
            seen.append("hold")
            await monitor.cover()
            verdict = monitor.generated(chars)
        if isinstance(verdict, EndStream):
            seen.append(verdict.code)
            break
        assert verdict == PASS
        seen.append("pass")
    if admission.pending is not None:
        await admission.pending.future()
    return seen


WORDY = [7] * CAP  # one word an event, seven characters with its space: 28 tokens' worth of text for 16 tokens


async def test_text_longer_than_the_cap_asks_for_no_extension_and_is_not_cut() -> None:
    monitor, budget, admission, asked = await _monitor(CAP, room=0)
    seen = await _relay(monitor, admission, WORDY)
    assert seen == ["pass"] * CAP, "every event goes out: the limits hold the whole cap"
    assert asked == [], "no extension is asked for output the provider cannot produce"
    assert budget.completion_tokens == CAP and monitor.streamed_tokens() == CAP


async def test_without_a_cap_the_same_text_is_extended_for_and_cut_at_a_spent_limit() -> None:
    """The same stream, its request naming no cap (the reservation is the configured default): the text's estimate
    outgrows the reservation, so the stream asks for more, and the tokens limit with no room left cuts it."""
    monitor, _, admission, asked = await _monitor(0, room=0)
    seen = await _relay(monitor, admission, WORDY)
    assert asked, "an extension was asked for"
    assert seen[-1] == "token_budget_exceeded" and seen.count("pass") < CAP


async def test_more_events_than_the_cap_allows_are_held_to_the_limits_by_their_text() -> None:
    """An upstream that does not keep to the cap: the seventeenth event with text is past it whatever its length."""
    monitor, budget, admission, asked = await _monitor(CAP, room=0)
    seen = await _relay(monitor, admission, [1] * (CAP + 10))
    assert seen == ["pass"] * CAP + ["hold", "token_budget_exceeded"]
    assert asked, "the limits were asked for more once the output passed the cap"
    assert budget.completion_tokens == CAP


async def test_past_the_caps_events_the_text_counts_in_full() -> None:
    """Once an upstream has sent more events with text than the cap's tokens, its text is counted as text is, not
    held to the cap nor to one token an event: 18 words of seven characters are 32 tokens' worth."""
    monitor, budget, admission, asked = await _monitor(CAP, room=10_000)
    seen = await _relay(monitor, admission, [7] * (CAP + 2))
    assert seen == ["pass"] * CAP + ["hold", "pass", "pass"], "the seventeenth waits for the more it needs"
    assert budget.completion_tokens == 32 and asked


async def test_text_past_twice_the_caps_worth_is_estimated_from_the_text_again() -> None:
    """Few events, much text (an upstream sending many tokens an event past the cap): from 33 tokens' worth of text
    (twice the cap, plus one), the estimate is the text's, and the spent limit cuts before that event goes out."""
    monitor, budget, admission, _ = await _monitor(CAP, room=0)
    seen = await _relay(monitor, admission, [64, 64, 4, 40])
    assert seen == ["pass", "pass", "hold", "token_budget_exceeded"]
    assert budget.completion_tokens == CAP


async def test_the_extension_ahead_is_asked_for_once_past_the_cap() -> None:
    """With room left on the tokens limit, an upstream past its cap gets its extension ahead of need as any stream."""
    monitor, budget, admission, asked = await _monitor(CAP, room=10_000)
    seen = await _relay(monitor, admission, [1] * (CAP + 40))
    assert "token_budget_exceeded" not in seen
    assert asked and budget.completion_tokens == CAP + 40


async def test_a_limit_holding_the_cap_is_not_asked_for_more_beside_one_that_does_not() -> None:
    """The money limit reserved a nano short of what the capped output costs: it alone is asked for more, ahead of
    need; the tokens limits hold the cap and are left alone."""
    monitor, _, admission, asked = await _monitor(CAP, room=0, money_short=1)
    seen = await _relay(monitor, admission, WORDY)
    assert "token_budget_exceeded" not in seen and "budget_exceeded" not in seen
    assert asked, "the money limit was asked for more"
    named = {key for call in asked for key, _, _ in call}
    assert all("spend" in key for key in named), named


async def test_a_cap_above_the_reservation_changes_nothing() -> None:
    """A request naming two caps reserves by the first; the larger one is the estimate's cap, so a limit holding
    only the smaller is not covered by it, and the stream is judged by its text as if no cap were named."""
    capped_monitor, _, capped_admission, capped_asked = await _monitor(CAP * 4, room=0)
    plain_monitor, _, plain_admission, plain_asked = await _monitor(0, room=0)
    capped = await _relay(capped_monitor, capped_admission, WORDY)
    plain = await _relay(plain_monitor, plain_admission, WORDY)
    assert capped == plain and capped[-1] == "token_budget_exceeded"
    assert len(capped_asked) == len(plain_asked) >= 1


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"max_tokens": 16}, 16),
        ({"max_completion_tokens": 40, "max_tokens": 16}, 40),  # the largest named
        ({"max_tokens": 16, "max_completion_tokens": 4}, 16),
        ({"max_output_tokens": 300}, 300),  # the Responses API's
        ({"max_tokens": 16, "n": 3}, 48),  # every answer held to it
        ({}, 0),
        ({"max_tokens": None}, 0),
        ({"max_tokens": 0}, 0),
        ({"max_tokens": -5}, 0),
        ({"max_tokens": True}, 0),
        ({"max_tokens": 16.0}, 0),  # not a count: the provider may read it otherwise
        ({"max_tokens": "16"}, 0),
        ({"max_tokens": 16, "n": 0}, 16),
        ({"max_tokens": 16, "n": True}, 16),
    ],
)
def test_the_cap_a_request_names(body: dict[str, Any], cap: int) -> None:
    assert completion_cap(body) == cap


def test_the_reservation_still_takes_the_first_cap_named_and_the_default_without_one() -> None:
    assert requested_completion_tokens("chat", {"max_completion_tokens": 40, "max_tokens": 16, "n": 2}, 4096) == 80
    assert requested_completion_tokens("chat", {"max_tokens": 16.0}, 4096) == 4096
    assert requested_completion_tokens("embedding", {"max_tokens": 16}, 4096) == 0
