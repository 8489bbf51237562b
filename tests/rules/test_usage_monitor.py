"""The usage chunk the gateway asked for on the client's behalf never reaches a client that did not ask for it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tollgate.upstream.sse import DROP, PASS
from tollgate.upstream.usage import UsageMonitor

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def monitor(client_wants_usage: bool) -> tuple[UsageMonitor, Any]:
    ctx = SimpleNamespace(usage=None)
    return UsageMonitor(ctx, client_wants_usage, None), ctx  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "choices",
    [[], [{"index": 0, "delta": {}}], [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}], None],
    ids=["openai-empty", "litellm-empty-delta", "role-only", "no-choices"],
)
def test_a_usage_chunk_that_carries_nothing_else_is_dropped_and_its_usage_kept(choices: Any) -> None:
    m, ctx = monitor(client_wants_usage=False)
    event = {"id": "x", "choices": choices, "usage": USAGE}
    assert m.on_event(event) == DROP
    assert ctx.usage.total_tokens == 15 and ctx.usage.reported


def test_a_chunk_with_content_and_usage_goes_out_without_its_usage() -> None:
    m, ctx = monitor(client_wants_usage=False)
    event = {"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}], "usage": USAGE}
    replaced = m.on_event(event)
    assert isinstance(replaced, bytes)
    assert orjson.loads(replaced) == {"id": "x", "choices": event["choices"]}
    assert ctx.usage.total_tokens == 15


def test_a_client_that_asked_for_usage_gets_the_chunk_as_it_came() -> None:
    m, _ = monitor(client_wants_usage=True)
    assert m.on_event({"id": "x", "choices": [{"index": 0, "delta": {}}], "usage": USAGE}) == PASS
