"""The Responses API's answers as the gateway relays them: usage read, output held to budgets, ids made the gateway's.

A whole answer is a ``response`` object: its ``usage`` settles the request
(``input_tokens`` with their cached part, ``output_tokens`` with their
reasoning part) and its id becomes the gateway's (tollgate/upstream/response_ids.py),
so that a later ``GET``, ``DELETE`` or ``previous_response_id`` finds the upstream
that stores it. A stream says the same in events: ``response.created``,
``response.in_progress`` and the last one (``response.completed``,
``response.incomplete`` or ``response.failed``) carry the response object, whose
ids are rewritten in the event; output arrives as ``*.delta`` events (text,
refusals, tool arguments, reasoning), each held to the request's budgets as chat
chunks are (:class:`~tollgate.upstream.usage.UsageMonitor`); an ``error`` event
from the upstream ends the stream with the gateway's own.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from tollgate.upstream.response_ids import relabel
from tollgate.upstream.sse import PASS, EndStream
from tollgate.upstream.usage import MeteredRequest, StreamLimits, Usage, UsageMonitor, usage_from_io_tokens

__all__ = ["ResponsesUsageMonitor", "relabeled_response"]

# Events whose ``delta`` is generated output.
_OUTPUT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.custom_tool_call_input.delta",
    }
)
# Events that carry the whole response object (the last three end the stream, with its usage).
_CARRY_RESPONSE = frozenset(
    {"response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"}
)


def relabeled_response(data: bytes, upstream: str, tenant: str) -> tuple[bytes, Usage | None]:
    """A whole answer with the gateway's ids, and its usage (the bytes as they were when they are not a response)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data, None
    if not isinstance(doc, dict):
        return data, None
    usage = usage_from_io_tokens(doc.get("usage"))
    if relabel(doc, upstream, tenant):
        data = orjson.dumps(doc)
    return data, usage


class _Principal(Protocol):
    @property
    def tenant(self) -> str: ...


class RelayedRequest(MeteredRequest, Protocol):
    """What the monitor reads to give ids: who asked (``principal``), which upstream answers (``upstream_name``)."""

    @property
    def principal(self) -> _Principal | None: ...

    @property
    def upstream_name(self) -> str | None: ...


class ResponsesUsageMonitor(UsageMonitor):
    """The stream monitor of a Responses API request (see the module docstring)."""

    __slots__ = ("_relayed",)

    # Its events are not chat chunks: every one is parsed and judged by on_event.
    chat_chunks = False

    def __init__(self, ctx: RelayedRequest, budget: StreamLimits | None) -> None:
        super().__init__(ctx, True, budget)
        # The request again, typed for ids; let go of with UsageMonitor.ctx when the stream ends (see on_end).
        self._relayed: RelayedRequest | None = ctx

    def on_event(self, data: Any) -> int | bytes | EndStream:
        if not isinstance(data, dict):
            return PASS
        kind = data.get("type")
        if kind in _OUTPUT_DELTAS:
            delta = data.get("delta")
            return self.generated(len(delta)) if isinstance(delta, str) and delta else PASS
        if kind in _CARRY_RESPONSE:
            response = data.get("response")
            ctx = self._relayed  # the request (UsageMonitor.ctx, typed for ids); None once the stream has ended
            if isinstance(response, dict) and ctx is not None:
                usage = usage_from_io_tokens(response.get("usage"))
                if usage is not None:
                    ctx.usage = usage
                tenant = ctx.principal.tenant if ctx.principal is not None else "anonymous"
                if ctx.upstream_name is not None and relabel(response, ctx.upstream_name, tenant):
                    return orjson.dumps(data)
            return PASS
        if kind == "error":
            return EndStream(
                f"upstream sent an error event: {data.get('code')}: {data.get('message')}", "upstream_error_event"
            )
        return PASS

    def on_end(self, outcome: str) -> None:
        # Both references to the request go: the request holds this monitor, and a reference left here would
        # make the two a cycle, freed only by the cyclic collector (with all that the request holds).
        self._relayed = None
        super().on_end(outcome)
