"""Anthropic's Messages API on the mock upstream: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

The requests pass the same front as the OpenAI routes (:func:`~tollgate.mock.faults.receive`:
counted, recorded with every header the client sent, such as ``x-api-key`` and
``anthropic-version``, then latency and injected errors) and stream through the
same writer (:func:`~tollgate.mock.faults.stream_events`: pacing, cut, stall,
malformed). Only the shapes differ: errors are ``{"type": "error", "error":
{"type", "message"}}`` with Anthropic's type for the status (429
``rate_limit_error`` keeping ``Retry-After``, 529 ``overloaded_error``, 401
``authentication_error``, other 5xx ``api_error``, ...), and the ``error_after``
knob (header ``x-mock-error-after``) ends a stream with ``event: error`` after N
events, its type that of ``error_status``. The API key and version are not
checked; a 401 is injected like any other status.

Answers:

- ``max_tokens`` is required (a 400 ``invalid_request_error`` without it). The
  reply is ``default_tokens`` words long (``completion_tokens`` when that knob
  is set, which ignores ``max_tokens`` as on the OpenAI routes), cut to
  ``max_tokens`` with ``stop_reason: "max_tokens"``, else ``"end_turn"``. The
  first of ``stop_sequences`` found in the generated text ends it before the
  sequence, with ``stop_reason: "stop_sequence"`` and the tokens up to the end
  of the sequence counted as output.
- Tool use: when the request has ``tools`` and ``tool_choice`` is ``{"type":
  "any"}`` (the first tool) or ``{"type": "tool", "name": ...}`` (that tool),
  the reply is one ``tool_use`` block whose ``input`` holds a sample value for
  each required property of the tool's ``input_schema`` (the first ``enum``
  value, else by type: ``"mock"``, ``1``, ``1.5``, ``true``, ``[]``, ``{}``),
  with ``stop_reason: "tool_use"``; its output tokens are those of the name and
  the input's JSON. ``auto``, ``none`` or no ``tool_choice`` answer text, so a
  client sends its ``tool_result`` back with ``auto`` to close the round trip.
- Input tokens come from the estimator the OpenAI routes use, over the same
  text: the system prompt counts as one message, each message as its text
  blocks (plus a ``tool_use`` block's input JSON and a ``tool_result``'s text)
  joined by spaces; tool definitions and images are not counted. The cache
  counters are always 0.
- ``"stream": true`` answers Anthropic's SSE events, each an ``event:`` line and
  a ``data:`` line: ``message_start`` (input tokens), ``content_block_start``,
  ``ping``, ``content_block_delta`` (``text_delta`` per ``tokens_per_chunk``
  tokens, or ``input_json_delta`` of ``4 * tokens_per_chunk`` characters),
  ``content_block_stop``, ``message_delta`` (stop reason, output tokens),
  ``message_stop``; the deltas and the two events after them are paced.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from tollgate.mock.faults import receive, stream_events
from tollgate.mock.generation import prompt_tokens_chat, sample_arguments
from tollgate.mock.settings import MockSettings
from tollgate.mock.state import MOCK_STATE, MockState
from tollgate.token_estimate import CHARS_PER_TOKEN, estimate_tokens

__all__ = ["anthropic_error", "count_tokens", "error_type", "messages"]

_JSON = "application/json"
_ERROR_TYPES: Mapping[int, str] = MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }
)
_PING_EVENT = b'event: ping\ndata: {"type":"ping"}\n\n'
_STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_BLOCK_STOP_EVENT = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error(status: int, message: str, *, retry_after: str | None = None) -> web.Response:
    """An error answered as Anthropic does: ``{"type": "error", "error": {"type", "message"}}``."""
    body = orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})
    headers = {"Content-Type": _JSON}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return web.Response(status=status, body=body, headers=headers)


def _in_anthropic_shape(response: web.StreamResponse) -> web.StreamResponse:
    """An error answer of the shared front rewritten in Anthropic's shape, its status, message and Retry-After kept."""
    if response.status < 400 or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    message = orjson.loads(response.body)["error"]["message"]
    return anthropic_error(response.status, message, retry_after=response.headers.get("Retry-After"))


async def _admit(request: web.Request, state: MockState) -> tuple[dict[str, Any], MockSettings] | web.StreamResponse:
    """The shared front, then the fields every Messages request needs; errors in Anthropic's shape."""
    admitted = await receive(request, state)
    if isinstance(admitted, web.StreamResponse):
        return _in_anthropic_shape(admitted)
    messages = admitted[0].get("messages")
    if not isinstance(messages, list) or not messages:
        return anthropic_error(400, "messages: Field required (a non-empty array)")
    return admitted


def _block_text(block: Any) -> str:
    if not isinstance(block, dict):
        return ""
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return str(block["text"])
    if kind == "tool_use":
        return orjson.dumps(block.get("input", {})).decode()
    if kind == "tool_result":
        return _content_text(block.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(text for text in map(_block_text, content) if text)
    return ""


def input_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a Messages request, as the OpenAI routes count the same text."""
    texts = [
        {"content": _content_text(message.get("content"))} for message in body["messages"] if isinstance(message, dict)
    ]
    system = _content_text(body.get("system"))
    if system:
        texts.insert(0, {"content": system})
    return prompt_tokens_chat(texts)


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | str | None:
    """The tool ``tool_choice`` makes the reply call, None for a text reply, or why the choice is invalid."""
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") not in ("any", "tool"):
        return None
    tools = body.get("tools")
    named = (
        [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)] if isinstance(tools, list) else []
    )
    if not named:
        return "tool_choice: a tool must be chosen from tools, and tools is empty"
    if choice["type"] == "any":
        return named[0]
    chosen = next((t for t in named if t["name"] == choice.get("name")), None)
    return chosen if chosen is not None else f"tool_choice.name: no tool named {choice.get('name')!r} in tools"


def _text_reply(body: dict[str, Any], knobs: MockSettings, state: MockState) -> tuple[str, int, str, str | None]:
    """The reply text, its output tokens, the stop reason and the stop sequence met."""
    cap = state.settings.max_tokens_cap
    if knobs.completion_tokens is not None:
        tokens, reason = min(knobs.completion_tokens, cap), "end_turn"
    else:
        natural = min(knobs.default_tokens, cap)
        limit: int = body["max_tokens"]
        tokens, reason = (limit, "max_tokens") if limit < natural else (natural, "end_turn")
    text = state.text.prefix(tokens)
    found: tuple[int, str] | None = None
    for sequence in body.get("stop_sequences") or ():
        at = text.find(sequence) if sequence else -1
        if at >= 0 and (found is None or at < found[0]):
            found = (at, sequence)
    if found is None:
        return text, tokens, reason, None
    at, sequence = found
    return text[:at], bisect_left(state.text.ends, at + len(sequence)), "stop_sequence", sequence


def _validate(body: dict[str, Any]) -> str | None:
    limit = body.get("max_tokens")
    if limit is None:
        return "max_tokens: Field required"
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        return "max_tokens: Input should be an integer greater than or equal to 1"
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a list of strings"
    return None


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``: a message, or its SSE events with ``"stream": true``."""
    state = request.app[MOCK_STATE]
    admitted = await _admit(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, knobs = admitted
    problem = _validate(body)
    tool = _forced_tool(body)
    if isinstance(tool, str):
        problem = problem or tool
    if problem is not None:
        return anthropic_error(400, problem)
    prompt = input_tokens(body)
    ident = state.next_id("msg").replace("-", "_", 1)
    if isinstance(tool, dict):
        arguments = orjson.dumps(sample_arguments(tool.get("input_schema")))
        name: str = tool["name"]
        opened = {"type": "tool_use", "id": state.next_id("toolu").replace("-", "_", 1), "name": name, "input": {}}
        block = opened | {"input": orjson.loads(arguments)}
        output, reason, sequence = max(1, estimate_tokens(len(name) + len(arguments))), "tool_use", None
        width = CHARS_PER_TOKEN * knobs.tokens_per_chunk
        deltas = [
            {"type": "input_json_delta", "partial_json": arguments[i : i + width].decode()}
            for i in range(0, len(arguments), width)
        ]
    else:
        text, output, reason, sequence = _text_reply(body, knobs, state)
        opened, block = {"type": "text", "text": ""}, {"type": "text", "text": text}
        ends, step = state.text.ends, knobs.tokens_per_chunk
        pieces = (text[ends[i] : ends[min(i + step, output)]] for i in range(0, output, step))
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces if piece]
    usage = {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    }
    message: dict[str, Any] = {"id": ident, "type": "message", "role": "assistant", "model": body["model"]}
    if not body.get("stream"):
        message |= {"content": [block], "stop_reason": reason, "stop_sequence": sequence, "usage": usage}
        return web.Response(body=orjson.dumps(message), headers={"Content-Type": _JSON})
    start: dict[str, Any] = {
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage | {"output_tokens": min(1, output)},
    }
    events = [
        _event(b"message_start", {"type": "message_start", "message": message | start}),
        _event(b"content_block_start", {"type": "content_block_start", "index": 0, "content_block": opened}),
        _PING_EVENT,
    ]
    events += [_event(b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas]
    events += [
        _BLOCK_STOP_EVENT,
        _event(
            b"message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": {"output_tokens": output},
            },
        ),
        _STOP_EVENT,
    ]
    if knobs.error_after is not None and knobs.error_after < len(events):
        status = knobs.error_status
        error = {"type": error_type(status), "message": f"Error {status} mid-stream (injected by the mock upstream)."}
        events[knobs.error_after :] = [_event(b"error", {"type": "error", "error": error})]
    return await stream_events(request, state, knobs, events, paced_from=3)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, the figure a message for the same request reports."""
    state = request.app[MOCK_STATE]
    admitted = await _admit(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, _knobs = admitted
    return web.Response(body=orjson.dumps({"input_tokens": input_tokens(body)}), headers={"Content-Type": _JSON})
