"""A stream asks for more of its token budget ahead of need only once its output nears what it reserved."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.rules.extend_calls import recording_limiter
from tollgate.limiter.decision import Decision
from tollgate.limiter.spec import LimitSpec
from tollgate.policy.admission import Admission
from tollgate.policy.settlement import StreamBudget

PROMPT, MAX_TOKENS = 2000, 500


def budget() -> tuple[StreamBudget, Admission, list[Any]]:
    limiter, asked = recording_limiter()
    spec = LimitSpec(
        name="tpm",
        kind="sliding_window",
        limit=1_000_000,
        cost=PROMPT + MAX_TOKENS,
        unit="tokens",
        scope_key=(("tenant", "acme"),),
        tenant="acme",
    )
    admission = Admission(
        decision=Decision(True, ()),
        prompt_estimate=PROMPT,
        completion_reserved=MAX_TOKENS,
        stream_limits=((spec, True),),
    )
    return StreamBudget(admission, limiter), admission, asked


async def relay(stream: StreamBudget, tokens: int) -> None:
    for _ in range(tokens):
        completion = stream.after(4)  # one token of text an event
        assert not stream.short(completion)
        stream.relayed(4, completion)


async def test_a_long_prompt_does_not_make_the_first_event_ask_for_more() -> None:
    stream, admission, asked = budget()
    await relay(stream, MAX_TOKENS * 3 // 4 - 1)
    assert admission.pending is None and asked == [], "no extension while three quarters of the output remain unused"
    await relay(stream, 1)
    assert admission.pending is not None, "at three quarters of the output allowance, one is asked for ahead"
    await admission.pending.future()
    assert len(asked) == 1


async def test_a_stream_that_ends_inside_its_reservation_asks_for_nothing() -> None:
    stream, admission, asked = budget()
    await relay(stream, 100)
    assert admission.pending is None and asked == []


async def test_the_extension_asked_ahead_leaves_in_the_events_call_without_a_task() -> None:
    """Asked for beside the stream by Eager: the call is made before relayed() returns, and no Task is made for it
    (a Task costs a stream several microseconds on Python 3.11: its name, its WeakSet entry, a turn's delay)."""
    stream, admission, asked = budget()
    await relay(stream, MAX_TOKENS * 3 // 4 - 1)
    tasks = asyncio.all_tasks()
    completion = stream.after(4)
    stream.relayed(4, completion)
    assert len(asked) == 1, "the extension's store call was made inside the event's call"
    assert asyncio.all_tasks() == tasks
    assert admission.pending is not None
    await admission.pending.future()
    assert admission.extensions, "its grant was kept for settling"
