"""A stream's budget judges its usual event in one call (``relayed_calm``) exactly as its four checks would.

The same streams of events go through two budgets on two fresh limiters: one as it runs, and one told before each
event that nothing is calm, so that its one-call path declines and every event takes ``after``, ``short``,
``spent_cut`` and ``relayed``, each looking at every limit.
Verdicts, holds, extensions asked for (and forgotten once back), what each limit holds and the tokens counted
must all agree, through the calm start, the extension ahead of need, holds, and the cut when a limit runs dry.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.rules.extend_calls import recording_limiter
from tollgate.limiter.decision import Decision
from tollgate.limiter.spec import LimitSpec
from tollgate.policy.admission import Admission
from tollgate.policy.settlement import StreamBudget
from tollgate.upstream.sse import HOLD, PASS, EndStream
from tollgate.upstream.usage import UsageMonitor

PROMPT, MAX_TOKENS = 200, 40


def _uncalm(budget: StreamBudget) -> None:
    """Make ``budget`` judge the next event without shortcuts: ``relayed_calm`` declines, and ``short``,
    ``spent_cut`` and ``relayed`` look at every limit (a cover or an extension sets the point again)."""
    budget._calm = 0


def _spec(name: str, unit: str, limit: int, cost: int) -> LimitSpec:
    return LimitSpec(
        name=name,
        kind="sliding_window",
        limit=limit,
        cost=cost,
        unit=unit,
        scope_key=(("tenant", "acme"),),
        tenant="acme",
    )


def _budget(room: int) -> tuple[UsageMonitor, StreamBudget, Admission, list[Any]]:
    limiter, asked = recording_limiter()
    limits = (
        # room: how far past its reservation the tokens limit can grow before it runs dry and cuts the stream
        (_spec("tpm", "tokens", PROMPT + MAX_TOKENS + room, PROMPT + MAX_TOKENS), True),
        (_spec("otpm", "output_tokens", 1_000_000, MAX_TOKENS), False),
    )
    admission = Admission(
        decision=Decision(True, ()),
        prompt_estimate=PROMPT,
        completion_reserved=MAX_TOKENS,
        stream_limits=limits,
    )
    budget = StreamBudget(admission, limiter)
    return UsageMonitor(None, False, budget), budget, admission, asked  # type: ignore[arg-type]


async def _stream(calm: bool, sizes: list[int], waits: list[bool], room: int) -> list[Any]:
    monitor, budget, admission, asked = _budget(room)
    seen: list[Any] = []
    for chars, wait in zip(sizes, waits):
        if wait and admission.pending is not None:  # an extension asked for ahead comes back before this event
            await admission.pending.future()
        if not calm:
            _uncalm(budget)
        verdict = monitor.generated(chars)
        while verdict == HOLD:
            seen.append("hold")
            await monitor.cover()
            if not calm:
                _uncalm(budget)
            verdict = monitor.generated(chars)
        if isinstance(verdict, EndStream):
            seen.append(("end", verdict.code))
            break
        assert verdict == PASS
        seen.append((budget.completion_tokens, list(budget._held), list(budget._open), admission.pending is None))
    if admission.pending is not None:
        await admission.pending.future()
    seen.append(asked)
    seen.append((budget.completion_tokens, list(budget._held), list(budget._open)))
    return seen


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("room", [0, 30, 10_000])
async def test_one_call_judges_every_event_as_the_four_calls_do(seed: int, room: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice((1, 3, 4, 5, 9, 17, 40)) for _ in range(rng.randint(5, 120))]
    waits = [rng.random() < 0.5 for _ in sizes]
    fast = await _stream(True, sizes, waits, room)
    slow = await _stream(False, sizes, waits, room)
    assert fast == slow


async def test_the_calm_start_is_judged_in_one_call() -> None:
    """The usual stream's events go through the one-call path until three quarters of the output (the test
    would pass without the path, but then it proves nothing: this one fails if the path is never taken)."""
    _, budget, _, _ = _budget(10_000)
    assert budget.relayed_calm(4)
    assert budget.completion_tokens == 1
    for _ in range(MAX_TOKENS):
        if not budget.relayed_calm(4):
            break
    assert budget.completion_tokens == MAX_TOKENS * 3 // 4 - 1, "calm up to where an extension is due ahead"
