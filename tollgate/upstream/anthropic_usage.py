"""Token usage in Anthropic's words: a message's ``usage``, and the monitor of a Messages stream relayed to its client.

Anthropic counts ``input_tokens`` without the prompt-cache tokens, which it
reports beside them (``cache_read_input_tokens``, ``cache_creation_input_tokens``);
the gateway's :class:`~tollgate.upstream.usage.Usage` counts every input token
as a prompt token, its cache parts billed at their own prices.

In a stream, ``message_start`` carries the input tokens and ``message_delta``
the output tokens so far (the last one: all of them). Output arrives in
``content_block_delta`` events: text, tool arguments (``input_json_delta``)
and thinking, each held to the request's budgets as OpenAI chunks are
(:class:`~tollgate.upstream.usage.UsageMonitor`). An ``error`` event from the
upstream ends the stream with the gateway's own error event.
"""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.sse import PASS, EndStream
from tollgate.upstream.usage import Usage, UsageMonitor

__all__ = ["MessagesUsageMonitor", "usage_from_anthropic", "usage_from_anthropic_body"]

_DELTA_FIELDS = ("text", "partial_json", "thinking")


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_anthropic(usage: Any, output_tokens: int | None = None) -> Usage | None:
    """The gateway's usage for an Anthropic ``usage`` object (None when it holds no input count)."""
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    cached = _count(usage, "cache_read_input_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    output = _count(usage, "output_tokens") if output_tokens is None else output_tokens
    return Usage(
        _count(usage, "input_tokens") + cached + written,
        output,
        reported=True,
        cached_tokens=cached,
        cache_write_tokens=written,
    )


def usage_from_anthropic_body(body: bytes) -> Usage | None:
    """The usage of a whole Anthropic message; None when it has none or is not JSON."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return usage_from_anthropic(doc.get("usage")) if isinstance(doc, dict) else None


class MessagesUsageMonitor(UsageMonitor):
    """The stream monitor of a request in Anthropic's dialect (see the module docstring)."""

    __slots__ = ("_input",)

    # Its events are not chat chunks: every one is parsed and judged by on_event.
    chat_chunks = False

    def __init__(self, ctx: Any, budget: Any) -> None:
        super().__init__(ctx, True, budget)
        self._input: dict[str, Any] | None = None  # message_start's usage

    def on_event(self, data: Any) -> int | bytes | EndStream:
        if not isinstance(data, dict):
            return PASS
        kind = data.get("type")
        if kind == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict):
                for name in _DELTA_FIELDS:
                    piece = delta.get(name)
                    if isinstance(piece, str) and piece:
                        return self.generated(len(piece))
            return PASS
        if kind == "message_start":
            message = data.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._input = usage
        elif kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict):
                # Later deltas may repeat the input counts; message_start's stand where they do not.
                merged = {**(self._input or {}), **usage}
                found = usage_from_anthropic(merged, _count(usage, "output_tokens"))
                ctx = self.ctx
                if found is not None and ctx is not None:
                    ctx.usage = found
        elif kind == "error":
            error = data.get("error")
            error = error if isinstance(error, dict) else {}
            return EndStream(
                f"upstream sent an error event: {error.get('type')}: {error.get('message')}", "upstream_error_event"
            )
        return PASS

    def on_end(self, outcome: str) -> None:
        ctx = self.ctx
        if ctx is None:  # ended already
            return
        if ctx.usage is not None and ctx.usage.reported:
            self.ctx = None  # as UsageMonitor.on_end lets go of the request
            return
        counted = usage_from_anthropic(self._input, self.streamed_tokens()) if self._input is not None else None
        if counted is None:
            super().on_end(outcome)
            return
        counted.reported = False  # the input is the upstream's, the output our count of what was relayed
        ctx.usage = counted
        self.ctx = None
