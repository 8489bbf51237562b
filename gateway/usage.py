"""Real token usage: read from a JSON answer or a stream's final chunk, else counted from the streamed text.

For streams the gateway asks the upstream for ``stream_options.include_usage``
when the client did not, and hides that extra chunk from such a client. The
:class:`UsageMonitor` also holds a stream to its token budget: past its
reservation it asks for more (ahead of need), and when the budget is gone it
ends the stream if the rule says ``cut``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from .context import Usage
from .sse import DROP, PASS, EndStream
from .tokens import estimate_prompt_tokens

if TYPE_CHECKING:
    from .context import RequestContext
    from .settlement import StreamBudget

__all__ = ["usage_from_body", "usage_from_json", "request_stream_usage", "UsageMonitor"]


def usage_from_json(doc: Any) -> Usage | None:
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion, reported=True)


def usage_from_body(body: bytes) -> Usage | None:
    """The ``usage`` of a non-streamed JSON answer; None when it has none or is not JSON."""
    try:
        return usage_from_json(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def request_stream_usage(ctx: RequestContext) -> bool:
    """Make sure the upstream reports usage at the end of the stream; returns whether the client asked for it."""
    body = ctx.body
    assert body is not None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return True
    body["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    ctx.body_bytes = orjson.dumps(body)
    return False


class UsageMonitor:
    """The stream monitor of one request: captures usage, hides the extra usage chunk, enforces the token budget."""

    __slots__ = ("ctx", "client_wants_usage", "budget", "_chars")

    def __init__(self, ctx: RequestContext, client_wants_usage: bool, budget: StreamBudget | None) -> None:
        self.ctx = ctx
        self.client_wants_usage = client_wants_usage
        self.budget = budget
        self._chars = 0

    def on_event(self, data: Any) -> int | EndStream:
        if not isinstance(data, dict):
            return PASS
        usage = data.get("usage")
        choices = data.get("choices")
        if usage is not None:
            found = usage_from_json(data)
            if found is not None:
                self.ctx.usage = found
            if not self.client_wants_usage and not choices:
                return DROP
        if not choices or not isinstance(choices, list):
            return PASS
        text = 0
        for choice in choices:
            if isinstance(choice, dict):
                delta = choice.get("delta")
                piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(piece, str):
                    text += len(piece)
        if text and self.budget is not None:
            return self._hold_to_budget(text)
        self._chars += text
        return PASS

    def _hold_to_budget(self, chars: int) -> int | EndStream:
        budget = self.budget
        assert budget is not None
        budget.add_text_chars(chars)
        admission = budget.admission
        pending = admission.pending
        if pending is not None and pending.done():
            pending = admission.pending = None
        if pending is None and budget.should_extend():
            admission.pending = asyncio.get_running_loop().create_task(budget.extend())
        if budget.exhausted and budget.cut and budget.over():
            return EndStream("the stream was ended: the token budget of this tenant is exhausted", "token_budget_exceeded")
        return PASS

    def on_end(self, outcome: str) -> None:
        ctx = self.ctx
        if ctx.usage is None or not ctx.usage.reported:
            # No usage chunk (cut, broken, or an upstream that ignores include_usage): count what was streamed.
            completion = self.budget.completion_tokens if self.budget is not None else (self._chars + 3) // 4
            assert ctx.endpoint is not None and ctx.body is not None
            prompt = estimate_prompt_tokens(ctx.endpoint.kind, ctx.body)
            ctx.usage = Usage(prompt, completion, reported=False)
