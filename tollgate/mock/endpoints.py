"""The mock's endpoints in OpenAI's shapes (chat, completions, embeddings, models) and its observation routes.

A chat request whose ``tool_choice`` is ``"required"`` (the first function tool) or names a
function is answered with one call of that tool (arguments sampled from its parameters'
schema, finish reason ``tool_calls``), streamed as a tool-call delta with the name and then
the arguments in pieces; any other chat request is answered with text.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from tollgate.mock.faults import openai_error, receive, stream_events
from tollgate.mock.generation import (
    completion_length,
    embedding_base64,
    input_count,
    prompt_tokens_chat,
    prompt_tokens_inputs,
    sample_arguments,
)
from tollgate.mock.state import MOCK_STATE

__all__ = [
    "chat_completions",
    "clear_requests",
    "completions",
    "embeddings",
    "get_model",
    "list_models",
    "recorded_requests",
    "reset_stats",
    "stats",
]

_JSON = "application/json"
_DONE_EVENT = b"data: [DONE]\n\n"


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), headers={"Content-Type": _JSON})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, knobs = admitted
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return openai_error(400, "'messages' must be a non-empty array", param="messages")
    prompt_tokens = prompt_tokens_chat(messages)
    tokens, finish = completion_length(body, knobs, state.settings.max_tokens_cap)
    model: str = body["model"]
    created = int(time.time())
    ident = state.next_id("chatcmpl")
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
    tool = _forced_tool(body)
    if isinstance(tool, str):
        return openai_error(400, tool, param="tool_choice")
    if tool is not None:
        return await _tool_call(request, body, knobs, ident, created, usage, tool)
    if not body.get("stream"):
        return _json(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": state.text.prefix(tokens), "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )
    include_usage, head, tail = _chunk_frame(body, b"chat.completion.chunk", ident, created, model)
    events = [
        head
        + b'{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]'
        + tail
    ]
    for content in state.text.deltas(tokens, knobs.tokens_per_chunk):
        events.append(
            head + b'{"index":0,"delta":{"content":' + content + b'},"logprobs":null,"finish_reason":null}]' + tail
        )
    events.append(head + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]' + tail)
    if include_usage:
        empty = b'{"index":0,"delta":{}}' if knobs.usage_chunk_delta else b""
        events.append(head + empty + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
    events.append(_DONE_EVENT)
    return await stream_events(request, state, knobs, events, paced_from=1)


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | str | None:
    """The function ``tool_choice`` makes the reply call, None for a text reply, or why the choice is invalid."""
    choice = body.get("tool_choice")
    if choice != "required" and not isinstance(choice, dict):
        return None
    tools = body.get("tools")
    functions = [
        t["function"]
        for t in (tools if isinstance(tools, list) else ())
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    ]
    if choice == "required":
        return functions[0] if functions else "tool_choice 'required' needs at least one function in 'tools'"
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    named = next((f for f in functions if f["name"] == wanted), None)
    return named if named is not None else f"tool_choice names {wanted!r}, which is not in 'tools'"


async def _tool_call(
    request: web.Request,
    body: dict[str, Any],
    knobs: Any,
    ident: str,
    created: int,
    usage: dict[str, int],
    tool: dict[str, Any],
) -> web.StreamResponse:
    """A reply that calls ``tool`` once: whole, or streamed as a name delta then the arguments in three pieces."""
    state = request.app[MOCK_STATE]
    model: str = body["model"]
    call_id = state.next_id("call")
    arguments = orjson.dumps(sample_arguments(tool.get("parameters"))).decode()
    if not body.get("stream"):
        call = {"id": call_id, "type": "function", "function": {"name": tool["name"], "arguments": arguments}}
        message = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
        return _json(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [choice],
                "usage": usage,
            }
        )
    include_usage, head, tail = _chunk_frame(body, b"chat.completion.chunk", ident, created, model)

    def delta(payload: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": payload, "logprobs": None, "finish_reason": finish}
        return head + orjson.dumps(choice) + b"]" + tail

    opening = {"index": 0, "id": call_id, "type": "function", "function": {"name": tool["name"], "arguments": ""}}
    events = [delta({"role": "assistant", "content": None, "tool_calls": [opening]})]
    third = max(1, len(arguments) // 3)
    for start in range(0, len(arguments), third):
        piece = {"index": 0, "function": {"arguments": arguments[start : start + third]}}
        events.append(delta({"tool_calls": [piece]}))
    events.append(delta({}, "tool_calls"))
    if include_usage:
        events.append(head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
    events.append(_DONE_EVENT)
    return await stream_events(request, state, knobs, events, paced_from=1)


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, knobs = admitted
    if "prompt" not in body:
        return openai_error(400, "you must provide a prompt parameter", param="prompt")
    prompt_tokens = prompt_tokens_inputs(body["prompt"])
    tokens, finish = completion_length(body, knobs, state.settings.max_tokens_cap)
    model: str = body["model"]
    created = int(time.time())
    ident = state.next_id("cmpl")
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
    if not body.get("stream"):
        return _json(
            {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": [{"text": state.text.prefix(tokens), "index": 0, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
        )
    include_usage, head, tail = _chunk_frame(body, b"text_completion", ident, created, model)
    events = [
        head + b'{"text":' + content + b',"index":0,"logprobs":null,"finish_reason":null}]' + tail
        for content in state.text.deltas(tokens, knobs.tokens_per_chunk)
    ]
    events.append(head + b'{"text":"","index":0,"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]' + tail)
    if include_usage:
        events.append(head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
    events.append(_DONE_EVENT)
    return await stream_events(request, state, knobs, events, paced_from=0)


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, _knobs_unused = admitted
    if "input" not in body:
        return openai_error(400, "you must provide an input parameter", param="input")
    inputs = body["input"]
    prompt_tokens = prompt_tokens_inputs(inputs)
    dims = body.get("dimensions")
    if dims is not None and not (isinstance(dims, int) and 1 <= dims <= len(state.vector)):
        return openai_error(400, f"'dimensions' must be an integer 1..{len(state.vector)}", param="dimensions")
    if body.get("encoding_format") == "base64":
        vector = state.vector_b64 if dims is None else embedding_base64(state.vector[:dims])
    else:
        vector = state.vector_json if dims is None else orjson.dumps(state.vector[:dims])
    items = b",".join(
        b'{"object":"embedding","index":' + str(i).encode() + b',"embedding":' + vector + b"}"
        for i in range(input_count(inputs))
    )
    payload = (
        b'{"object":"list","data":['
        + items
        + b'],"model":'
        + orjson.dumps(body["model"])
        + b',"usage":{"prompt_tokens":'
        + str(prompt_tokens).encode()
        + b',"total_tokens":'
        + str(prompt_tokens).encode()
        + b"}}"
    )
    return web.Response(body=payload, headers={"Content-Type": _JSON})


async def list_models(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    state.stats["requests"] += 1
    return _json({"object": "list", "data": [_model(name) for name in state.settings.models]})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    state.stats["requests"] += 1
    name = request.match_info["model"]
    if name not in state.settings.models:
        return openai_error(404, f"The model '{name}' does not exist")
    return _json(_model(name))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "tollgate-mock"}


async def recorded_requests(request: web.Request) -> web.Response:
    state = request.app[MOCK_STATE]
    return _json({"recording": state.settings.record, "requests": list(state.requests)})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[MOCK_STATE].requests.clear()
    return web.Response(status=204)


async def stats(request: web.Request) -> web.Response:
    return _json(request.app[MOCK_STATE].stats)


async def reset_stats(request: web.Request) -> web.Response:
    request.app[MOCK_STATE].reset_stats()
    return web.Response(status=204)


def _chunk_frame(body: dict[str, Any], kind: bytes, ident: str, created: int, model: str) -> tuple[bool, bytes, bytes]:
    """Whether the client asked for a usage chunk, and the bytes before and after each chunk's choices."""
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = (
        b'data: {"id":'
        + orjson.dumps(ident)
        + b',"object":"'
        + kind
        + b'","created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"system_fingerprint":"fp_mock","choices":['
    )
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    return include_usage, head, tail
