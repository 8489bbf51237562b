"""OpenAI's Responses API on the mock upstream: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``.

``POST`` passes the shared front (:func:`~tollgate.mock.faults.receive`: counted,
recorded, latency and injected errors, ``cut_after``/``stall_after`` on a
non-stream) and streams through the shared writer
(:func:`~tollgate.mock.faults.stream_events`: pacing, cut, stall, malformed).

Answers:

- ``input`` is a string or a list of input items (messages, whose ``content``
  is a string or parts; ``function_call`` and ``function_call_output`` items);
  without it a 400. Input tokens are counted as the chat route counts messages,
  ``instructions`` counting as one.
- The reply is one ``message`` item with one ``output_text`` part of
  ``default_tokens`` words (``completion_tokens`` when that knob is set). A
  reasoning request (a ``reasoning`` object in the body, or a model whose name
  starts with ``o``) first has a ``reasoning`` item (empty summary) and
  reasoning tokens by effort: none 0 (and no item), minimal 8, low 16, medium
  (the default) 32, high 64, xhigh 128; they count in ``output_tokens``.
- ``max_output_tokens`` caps reasoning plus text as OpenAI does: when the
  reply would be longer, it is cut to the cap and the response is
  ``"incomplete"`` with ``incomplete_details.reason: "max_output_tokens"``
  (streams end with ``response.incomplete``); the ``completion_tokens`` knob
  ignores it.
- Tool calls: with ``tool_choice: "required"`` (the first function tool) or
  ``{"type": "function", "name": ...}`` (that tool), the reply is one
  ``function_call`` item whose ``arguments`` hold a sample value for each
  required parameter (:func:`~tollgate.mock.generation.sample_arguments`); its
  output tokens are those of the name and the arguments. ``auto``, ``none`` or
  no ``tool_choice`` answer text.
- Usage: ``input_tokens`` (with ``input_tokens_details.cached_tokens`` and
  ``cache_write_tokens``), ``output_tokens`` (with
  ``output_tokens_details.reasoning_tokens``), ``total_tokens``.
- Stored responses: unless the request says ``"store": false`` the response
  is kept (the last :data:`~tollgate.mock.state.STORED_RESPONSES`, as
  answered, see :class:`~tollgate.mock.state.StoredResponse`); ``GET`` answers
  it, ``DELETE`` forgets it (``{"id", "object": "response.deleted",
  "deleted": true}``); an unknown id is a 404. ``previous_response_id``
  naming an unknown response is OpenAI's 400 ``previous_response_not_found``;
  naming a known one adds that conversation's tokens to the input, as cached
  tokens. ``GET`` and ``DELETE`` are counted and recorded, and take no fault
  knobs.
- ``"stream": true`` answers OpenAI's Responses SSE: each event an ``event:
  <type>`` line and a ``data:`` line whose JSON has ``type`` and
  ``sequence_number``: ``response.created``, ``response.in_progress``, (a
  reasoning item's ``response.output_item.added`` and ``.done``), then for
  text ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per ``tokens_per_chunk`` tokens (paced by
  ``tokens_per_second``), ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``; for a tool
  call ``response.output_item.added``, ``response.function_call_arguments.delta``
  (``4 * tokens_per_chunk`` characters each, paced), ``...arguments.done``,
  ``response.output_item.done``; last ``response.completed`` (or
  ``response.incomplete``) with the whole response and its usage. No ``data:
  [DONE]``: OpenAI sends none on this API.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from tollgate.mock.faults import openai_error, receive, record, stream_events
from tollgate.mock.generation import prompt_tokens_chat, sample_arguments
from tollgate.mock.settings import MockSettings
from tollgate.mock.state import MOCK_STATE, MockState, StoredResponse
from tollgate.token_estimate import CHARS_PER_TOKEN, estimate_tokens

__all__ = ["create_response", "delete_response", "reasoning_effort", "retrieve_response"]

_JSON = "application/json"
_DEFAULT_EFFORT = "medium"
_REASONING_TOKENS: Mapping[str, int] = MappingProxyType(
    {"none": 0, "minimal": 8, "low": 16, "medium": 32, "high": 64, "xhigh": 128}
)


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), headers={"Content-Type": _JSON})


def reasoning_effort(body: dict[str, Any]) -> str | None:
    """The reasoning effort of a request: its ``reasoning.effort``, medium for a reasoning model; None when it does not reason."""
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort")
        return effort if isinstance(effort, str) and effort in _REASONING_TOKENS else _DEFAULT_EFFORT
    model: str = body["model"]
    return _DEFAULT_EFFORT if model.startswith("o") else None


def _input_tokens(body: dict[str, Any]) -> int | None:
    """Input tokens of the request's ``instructions`` and ``input``; None when ``input`` is neither a string nor a list."""
    messages: list[Any] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"content": given})
    elif isinstance(given, list):
        for item in given:
            if not isinstance(item, dict):
                continue
            if "content" in item:
                messages.append({"content": item["content"]})
            elif item.get("type") == "function_call_output":
                messages.append({"content": item.get("output")})
            elif item.get("type") == "function_call":
                messages.append({"content": f"{item.get('name', '')} {item.get('arguments', '')}"})
    else:
        return None
    return prompt_tokens_chat(messages)


def _forced_function(body: dict[str, Any]) -> dict[str, Any] | str | None:
    """The function tool ``tool_choice`` makes the reply call, None for a text reply, or why the choice is invalid."""
    choice = body.get("tool_choice")
    if choice != "required" and not (isinstance(choice, dict) and choice.get("type") == "function"):
        return None
    tools = body.get("tools")
    functions = (
        [t for t in tools if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)]
        if isinstance(tools, list)
        else []
    )
    if not isinstance(choice, dict):
        return functions[0] if functions else "Tool choice 'required' must be specified with 'tools' parameter."
    chosen = next((t for t in functions if t["name"] == choice.get("name")), None)
    return chosen if chosen is not None else f"Tool choice '{choice.get('name')}' not found in 'tools' parameter."


class _Reply:
    """What one request is answered: its output items (as completed), the text or arguments to stream, the usage."""

    def __init__(self, body: dict[str, Any], knobs: MockSettings, state: MockState, previous: int) -> None:
        self.body = body
        effort = reasoning_effort(body)
        self.effort = effort
        reasoning = _REASONING_TOKENS[effort] if effort is not None else 0
        self.reasoning_item = (
            {"id": state.next_object_id("rs"), "type": "reasoning", "summary": []} if reasoning else None
        )
        self.status = "completed"
        self.function: dict[str, Any] | None = None
        self.text = ""
        self.text_tokens = 0
        self.message_id = ""
        tool = _forced_function(body)
        if isinstance(tool, dict):
            arguments = orjson.dumps(sample_arguments(tool.get("parameters"))).decode()
            name: str = tool["name"]
            self.function = {
                "id": state.next_object_id("fc"),
                "type": "function_call",
                "status": "completed",
                "arguments": arguments,
                "call_id": state.next_object_id("call"),
                "name": name,
            }
            answer = max(1, estimate_tokens(len(name) + len(arguments)))
        else:
            cap = state.settings.max_tokens_cap
            limit = body.get("max_output_tokens")
            if knobs.completion_tokens is not None:
                answer = min(knobs.completion_tokens, cap)
            else:
                answer = min(knobs.default_tokens, cap)
                if isinstance(limit, int) and not isinstance(limit, bool) and limit < reasoning + answer:
                    reasoning = min(reasoning, max(limit, 0))
                    answer = max(limit, 0) - reasoning
                    self.status = "incomplete"
            self.text_tokens = answer
            self.text = state.text.prefix(answer)
            self.message_id = state.next_object_id("msg")
        self.reasoning_tokens = reasoning
        output_tokens = reasoning + answer
        prompt = _input_tokens(body) or 0
        self.usage = {
            "input_tokens": prompt + previous,
            "input_tokens_details": {"cached_tokens": previous, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + previous + output_tokens,
        }
        self.context_tokens = prompt + previous + answer

    def text_part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def message(self, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.message_id, "type": "message", "status": status, "content": content, "role": "assistant"}

    def output(self) -> list[dict[str, Any]]:
        items = [] if self.reasoning_item is None else [self.reasoning_item]
        if self.function is not None:
            items.append(self.function)
        else:
            items.append(self.message(self.status, [self.text_part(self.text)]))
        return items


def _response(
    body: dict[str, Any], reply: _Reply, ident: str, created: int, *, done: bool, store: bool
) -> dict[str, Any]:
    """The response object: as it ends when ``done``, else as ``response.created`` shows it (in progress, no output)."""
    status = reply.status if done else "in_progress"
    return {
        "id": ident,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"],
        "output": reply.output() if done else [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reply.effort, "summary": None},
        "service_tier": "default",
        "store": store,
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text", {"format": {"type": "text"}}),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": reply.usage if done else None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


class _Events:
    """The SSE events of one stream, numbered as they are added."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(self.frames), **fields}
        self.frames.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")


async def create_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: a response, or its SSE events with ``"stream": true``."""
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, knobs = admitted
    if not isinstance(body.get("input"), (str, list)):
        return openai_error(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    tool = _forced_function(body)
    if isinstance(tool, str):
        return openai_error(400, tool, param="tool_choice", code=None)
    previous = 0
    previous_id = body.get("previous_response_id")
    if previous_id is not None:
        stored = state.responses.get(previous_id) if isinstance(previous_id, str) else None
        if stored is None:
            return openai_error(
                400,
                f"Previous response with id '{previous_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        previous = stored.context_tokens
    reply = _Reply(body, knobs, state, previous)
    ident = state.next_object_id("resp")
    created = int(time.time())
    store = body.get("store") is not False
    final = _response(body, reply, ident, created, done=True, store=store)
    if store:
        state.store_response(StoredResponse(final, reply.context_tokens))
    if not body.get("stream"):
        return _json(final)
    events = _Events()
    opening = _response(body, reply, ident, created, done=False, store=store)
    events.add("response.created", response=opening)
    events.add("response.in_progress", response=opening)
    index = 0
    if reply.reasoning_item is not None:
        events.add("response.output_item.added", output_index=index, item=reply.reasoning_item)
        events.add("response.output_item.done", output_index=index, item=reply.reasoning_item)
        index += 1
    if reply.function is not None:
        item = reply.function
        arguments: str = item["arguments"]
        events.add(
            "response.output_item.added", output_index=index, item=item | {"status": "in_progress", "arguments": ""}
        )
        paced_from = len(events.frames)
        width = CHARS_PER_TOKEN * knobs.tokens_per_chunk
        for at in range(0, len(arguments), width):
            events.add(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=arguments[at : at + width],
            )
        paced_to = len(events.frames)
        events.add("response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=arguments)
        events.add("response.output_item.done", output_index=index, item=item)
    else:
        item_id = reply.message_id
        at_part = {"item_id": item_id, "output_index": index, "content_index": 0}
        events.add("response.output_item.added", output_index=index, item=reply.message("in_progress", []))
        events.add("response.content_part.added", **at_part, part=reply.text_part(""))
        paced_from = len(events.frames)
        for piece in state.text.pieces_of(reply.text_tokens, knobs.tokens_per_chunk):
            events.add("response.output_text.delta", **at_part, delta=piece, logprobs=[])
        paced_to = len(events.frames)
        events.add("response.output_text.done", **at_part, text=reply.text, logprobs=[])
        events.add("response.content_part.done", **at_part, part=reply.text_part(reply.text))
        events.add("response.output_item.done", output_index=index, item=final["output"][-1])
    events.add("response.completed" if reply.status == "completed" else "response.incomplete", response=final)
    return await stream_events(request, state, knobs, events.frames, paced_from=paced_from, paced_to=paced_to)


def _unknown(ident: str) -> web.Response:
    return openai_error(404, f"Response with id '{ident}' not found.", code=None)


async def retrieve_response(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}``: a stored response as it was answered."""
    state = request.app[MOCK_STATE]
    state.stats["requests"] += 1
    record(request, state, None)
    ident = request.match_info["response_id"]
    stored = state.responses.get(ident)
    return _unknown(ident) if stored is None else _json(stored.response)


async def delete_response(request: web.Request) -> web.Response:
    """``DELETE /v1/responses/{id}``: forget a stored response."""
    state = request.app[MOCK_STATE]
    state.stats["requests"] += 1
    record(request, state, None)
    ident = request.match_info["response_id"]
    if state.responses.pop(ident, None) is None:
        return _unknown(ident)
    return _json({"id": ident, "object": "response.deleted", "deleted": True})
