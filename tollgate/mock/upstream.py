"""OpenAI-compatible mock upstream with fault injection, for the demo, the integration tests and the benchmarks.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/embeddings``, ``GET /v1/models`` (and ``/v1/models/{id}``), shaped
like OpenAI's answers; ``"stream": true`` answers in OpenAI's SSE format
(role delta, one content delta per ``tokens_per_chunk`` tokens, a final chunk
with ``finish_reason``, a ``choices: []`` usage chunk when
``stream_options.include_usage`` is true, then ``data: [DONE]``). Generated
text is deterministic (words from a fixed list, one token each); prompt
tokens are estimated at ~4 characters per token plus 4 per message.

Observation: ``GET /_mock/requests`` (recent requests: time, method, path,
query, headers as ``[name, value]`` pairs, parsed JSON body), ``DELETE
/_mock/requests`` (clear), ``GET /_mock/stats`` (counters, and the
wall-clock ``time.time()`` at which the mock noticed a client leave a stream),
``DELETE /_mock/stats`` (reset).

Fault knobs. Each is a ``MockSettings`` field (instance-wide; CLI flag
``--field-name``) and can be overridden per request with the header
``x-mock-field-name`` (the gateway forwards ordinary client headers). They
apply to the POST endpoints only; an unparsable header value is a 400.

====================  ===========================  ===================================================
setting               request header               effect
====================  ===========================  ===================================================
latency_ms            x-mock-latency-ms            wait this long before the first byte (status line)
tokens_per_second     x-mock-tokens-per-second     pace stream content deltas (0 = as fast as possible)
status                x-mock-status                answer every request with this error status 400..599
                                                   and an OpenAI-shaped error body (0 = off)
error_rate            x-mock-error-rate            fraction 0..1 of requests answered ``error_status``
                                                   (RNG seeded by ``seed`` when given)
error_status          x-mock-error-status          status used by ``error_rate`` (default 500)
retry_after           x-mock-retry-after           ``Retry-After`` seconds sent with a 429
cut_after             x-mock-cut-after             streams: close the connection abruptly after N SSE
                                                   events (no terminating chunk, no ``[DONE]``);
                                                   non-streams: close without answering
stall_after           x-mock-stall-after           streams: stop after N events, keep the connection
                                                   open until the client leaves; non-streams: never
                                                   answer
malformed_after       x-mock-malformed-after       streams: after N events send one event whose data
                                                   is not JSON, then carry on
completion_tokens     x-mock-completion-tokens     generate exactly this many tokens (ignores
                                                   ``max_tokens``)
usage_chunk_delta     x-mock-usage-chunk-delta     streams: the usage chunk carries ``choices:
                                                   [{"index": 0, "delta": {}}]`` (as some proxies send)
linger_after_done_ms  x-mock-linger-after-done-ms  streams: end the body this long after ``[DONE]``
====================  ===========================  ===================================================

Instance-only settings: ``seed``, ``default_tokens`` (length when the request
has no ``max_tokens``), ``max_tokens_cap``, ``tokens_per_chunk``,
``embedding_dim``, ``models`` (listed by ``/v1/models``), ``record`` (off for
benchmarks) and ``record_limit`` (ring buffer size).
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import random
import signal
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from tollgate.mock.settings import HEADER_PREFIX, MockSettings, add_arguments, knobs_for, settings_from_args

__all__ = [
    "HEADER_PREFIX",
    "MOCK_STATE",
    "MockSettings",
    "MockState",
    "add_arguments",
    "make_mock_app",
    "run_mock",
    "settings_from_args",
    "start_mock",
]


_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "pack",
    "boxes",
    "of",
    "liquor",
    "jugs",
    "and",
    "every",
    "sphinx",
    "of",
    "black",
    "quartz",
    "judges",
    "my",
    "vow",
    "to",
    "keep",
    "the",
    "gateway",
    "fast",
]
_JSON = "application/json"
_SSE_HEADERS = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
_DONE_EVENT = b"data: [DONE]\n\n"
_MALFORMED_EVENT = b'data: {"id": "chatcmpl-malformed", "choices": [{"delta": {"content": "unterminated\n\n'
_PER_MESSAGE_TOKENS = 4
_REPLY_PRIMING_TOKENS = 3


_ERROR_KINDS: Mapping[int, tuple[str, str | None, str]] = MappingProxyType(
    {
        400: ("invalid_request_error", None, "Bad request (injected by the mock upstream)."),
        401: (
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided (injected by the mock upstream).",
        ),
        403: ("permission_error", "permission_denied", "Not allowed (injected by the mock upstream)."),
        404: ("invalid_request_error", "model_not_found", "The model does not exist (injected by the mock upstream)."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached (injected by the mock upstream)."),
        503: ("server_error", "service_unavailable", "The server is overloaded (injected by the mock upstream)."),
    }
)


class _Text:
    """The deterministic generated text, prebuilt once: any prefix of N tokens is a slice."""

    __slots__ = ("text", "ends", "pieces")

    def __init__(self, cap: int) -> None:
        words = [_WORDS[i % len(_WORDS)] for i in range(cap)]
        self.pieces = tuple(w if i == 0 else " " + w for i, w in enumerate(words))
        self.text = "".join(self.pieces)
        ends = [0]
        for piece in self.pieces:
            ends.append(ends[-1] + len(piece))
        self.ends = tuple(ends)

    def prefix(self, tokens: int) -> str:
        return self.text[: self.ends[tokens]]

    def deltas(self, tokens: int, per_chunk: int) -> list[bytes]:
        """The JSON-encoded content of each stream delta."""
        return [
            orjson.dumps(self.text[self.ends[i] : self.ends[min(i + per_chunk, tokens)]])
            for i in range(0, tokens, per_chunk)
        ]


class MockState:
    """Per-instance mutable state: counters, the request ring buffer, the RNG and prebuilt payloads."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.id_prefix = os.urandom(4).hex()
        self.sequence = 0
        self.requests: deque[dict[str, Any]] = deque(maxlen=settings.record_limit)
        self.text = _Text(settings.max_tokens_cap)
        vector = [
            round(math.sin(i * 0.7 + 1.0) / math.sqrt(settings.embedding_dim / 2), 6)
            for i in range(settings.embedding_dim)
        ]
        self.vector = vector
        self.vector_json = orjson.dumps(vector)
        self.vector_b64 = orjson.dumps(base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode())
        self.stats: dict[str, Any] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {
            "requests": 0,
            "errors_injected": 0,
            "streams_started": 0,
            "streams_completed": 0,
            "streams_aborted": 0,
            "streams_cut": 0,
            "streams_stalled": 0,
            "client_disconnects": [],
            "last_client_disconnect_at": None,
        }

    def next_id(self, prefix: str) -> str:
        self.sequence += 1
        return f"{prefix}-{self.id_prefix}{self.sequence:08x}"

    def client_left(self, chunks_sent: int) -> None:
        now = time.time()
        self.stats["streams_aborted"] += 1
        self.stats["last_client_disconnect_at"] = now
        disconnects = self.stats["client_disconnects"]
        disconnects.append({"at": now, "chunks_sent": chunks_sent})
        del disconnects[:-100]


MOCK_STATE = web.AppKey("mock_state", MockState)


# ---------------------------------------------------------------- helpers


def _error(
    status: int, message: str | None = None, *, param: str | None = None, retry_after: int | None = None
) -> web.Response:
    kind, code, default_message = _ERROR_KINDS.get(
        status,
        (
            "server_error" if status >= 500 else "invalid_request_error",
            None,
            f"Error {status} (injected by the mock upstream).",
        ),
    )
    body = orjson.dumps({"error": {"message": message or default_message, "type": kind, "param": param, "code": code}})
    headers = {"Content-Type": _JSON}
    if status == 429 and retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.Response(status=status, body=body, headers=headers)


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), headers={"Content-Type": _JSON})


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, {"type": "image_url", ...}]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _prompt_tokens_chat(messages: list[Any]) -> int:
    total = _REPLY_PRIMING_TOKENS
    for message in messages:
        if isinstance(message, dict):
            total += _PER_MESSAGE_TOKENS + _estimate_tokens(_content_text(message.get("content")))
    return total


def _prompt_tokens_inputs(inputs: Any) -> int:
    """Prompt tokens of a completions ``prompt`` or embeddings ``input``: a string, token ids, or a list of either."""
    if isinstance(inputs, str):
        return _estimate_tokens(inputs)
    if isinstance(inputs, list):
        if inputs and all(isinstance(x, int) for x in inputs):
            return len(inputs)
        return sum(_prompt_tokens_inputs(x) for x in inputs) or 1
    return 1


def _input_count(inputs: Any) -> int:
    if isinstance(inputs, list) and inputs and not all(isinstance(x, int) for x in inputs):
        return len(inputs)
    return 1


def _completion_length(body: dict[str, Any], knobs: MockSettings, cap: int) -> tuple[int, str]:
    """How many tokens to generate, and the finish_reason that goes with it."""
    if knobs.completion_tokens is not None:
        return min(knobs.completion_tokens, cap), "stop"
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and limit >= 0:
        return min(limit, cap), "length"
    return min(knobs.default_tokens, cap), "stop"


async def _read_json(request: web.Request, state: MockState) -> dict[str, Any] | web.Response:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
        parsed_ok = False
    else:
        parsed_ok = True
    if state.settings.record:
        state.requests.append(
            {
                "time": time.time(),
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body if parsed_ok else raw.decode(errors="replace"),
            }
        )
    if not isinstance(body, dict):
        return _error(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error(400, "you must provide a model parameter", param="model")
    return body


async def _admit(request: web.Request, state: MockState) -> tuple[dict[str, Any], MockSettings] | web.StreamResponse:
    """Common front of the POST endpoints: count, record, parse, apply latency and injected errors."""
    state.stats["requests"] += 1
    try:
        knobs = knobs_for(request.raw_headers, state.settings)
    except (ValueError, TypeError) as exc:
        return _error(400, f"bad x-mock header: {exc}")
    body = await _read_json(request, state)
    if isinstance(body, web.Response):
        return body
    if knobs.latency_ms:
        await asyncio.sleep(knobs.latency_ms / 1000.0)
    status = knobs.status
    if not status and knobs.error_rate and state.rng.random() < knobs.error_rate:
        status = knobs.error_status
    if status:
        state.stats["errors_injected"] += 1
        return _error(status, retry_after=knobs.retry_after)
    if not body.get("stream"):
        if knobs.cut_after is not None:
            _abort(request)
            return web.Response(status=204)  # never sent: the connection is already gone
        if knobs.stall_after is not None:
            await _wait_for_client_to_leave(request)
            return web.Response(status=204)
    return body, knobs


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _wait_for_client_to_leave(request: web.Request) -> None:
    """Send nothing until the client closes the connection (noticed by handler cancellation, or by polling)."""
    while (transport := request.transport) is not None and not transport.is_closing():
        await asyncio.sleep(0.02)


async def _stream(
    request: web.Request, state: MockState, knobs: MockSettings, events: list[bytes], paced_from: int
) -> web.StreamResponse:
    """Send SSE ``events`` one by one (each written and drained), applying pacing, cut, stall and malformed faults.

    ``events[paced_from:-1]`` are content deltas, paced by ``tokens_per_second``; the
    last event is ``[DONE]``.
    """
    stats = state.stats
    stats["streams_started"] += 1
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    sent = 0
    try:
        await response.prepare(request)
        writer = request.writer
        interval = knobs.tokens_per_chunk / knobs.tokens_per_second if knobs.tokens_per_second else 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        paced = 0
        for index, event in enumerate(events):
            if sent == knobs.cut_after:
                stats["streams_cut"] += 1
                _abort(request)
                return response
            if sent == knobs.stall_after:
                stats["streams_stalled"] += 1
                await _wait_for_client_to_leave(request)
                state.client_left(sent)
                return response
            if sent == knobs.malformed_after:
                await response.write(_MALFORMED_EVENT)
            if interval and paced_from <= index < len(events) - 1:
                paced += 1
                delay = started + paced * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await response.write(event)
            await writer.drain()
            sent += 1
        if knobs.linger_after_done_ms:
            await asyncio.sleep(knobs.linger_after_done_ms / 1000)
        await response.write_eof()
    except asyncio.CancelledError:
        state.client_left(sent)
        raise
    except ConnectionError:
        state.client_left(sent)
        return response
    stats["streams_completed"] += 1
    return response


# ---------------------------------------------------------------- endpoints


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    admitted = await _admit(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, knobs = admitted
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' must be a non-empty array", param="messages")
    prompt_tokens = _prompt_tokens_chat(messages)
    tokens, finish = _completion_length(body, knobs, state.settings.max_tokens_cap)
    model: str = body["model"]
    created = int(time.time())
    ident = state.next_id("chatcmpl")
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
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
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = (
        b'data: {"id":'
        + orjson.dumps(ident)
        + b',"object":"chat.completion.chunk","created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"system_fingerprint":"fp_mock","choices":['
    )
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
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
    return await _stream(request, state, knobs, events, paced_from=1)


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    admitted = await _admit(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, knobs = admitted
    if "prompt" not in body:
        return _error(400, "you must provide a prompt parameter", param="prompt")
    prompt_tokens = _prompt_tokens_inputs(body["prompt"])
    tokens, finish = _completion_length(body, knobs, state.settings.max_tokens_cap)
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
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    head = (
        b'data: {"id":'
        + orjson.dumps(ident)
        + b',"object":"text_completion","created":'
        + str(created).encode()
        + b',"model":'
        + orjson.dumps(model)
        + b',"system_fingerprint":"fp_mock","choices":['
    )
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
    events = [
        head + b'{"text":' + content + b',"index":0,"logprobs":null,"finish_reason":null}]' + tail
        for content in state.text.deltas(tokens, knobs.tokens_per_chunk)
    ]
    events.append(head + b'{"text":"","index":0,"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]' + tail)
    if include_usage:
        events.append(head + b'],"usage":' + orjson.dumps(usage) + b"}\n\n")
    events.append(_DONE_EVENT)
    return await _stream(request, state, knobs, events, paced_from=0)


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[MOCK_STATE]
    admitted = await _admit(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, _knobs_unused = admitted
    if "input" not in body:
        return _error(400, "you must provide an input parameter", param="input")
    inputs = body["input"]
    prompt_tokens = _prompt_tokens_inputs(inputs)
    dims = body.get("dimensions")
    if dims is not None and not (isinstance(dims, int) and 1 <= dims <= len(state.vector)):
        return _error(400, f"'dimensions' must be an integer 1..{len(state.vector)}", param="dimensions")
    if body.get("encoding_format") == "base64":
        vector = (
            state.vector_b64
            if dims is None
            else orjson.dumps(
                base64.b64encode(struct.pack(f"<{len(state.vector[:dims])}f", *state.vector[:dims])).decode()
            )
        )
    else:
        vector = state.vector_json if dims is None else orjson.dumps(state.vector[:dims])
    items = b",".join(
        b'{"object":"embedding","index":' + str(i).encode() + b',"embedding":' + vector + b"}"
        for i in range(_input_count(inputs))
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
        return _error(404, f"The model '{name}' does not exist")
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


# ---------------------------------------------------------------- app, runners, CLI


def make_mock_app(settings: MockSettings | None = None) -> web.Application:
    app = web.Application()
    app[MOCK_STATE] = MockState(settings or MockSettings())
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/_mock/requests", recorded_requests)
    app.router.add_delete("/_mock/requests", clear_requests)
    app.router.add_get("/_mock/stats", stats)
    app.router.add_delete("/_mock/stats", reset_stats)
    return app


async def start_mock(
    host: str = "127.0.0.1", port: int = 0, settings: MockSettings | None = None
) -> tuple[web.AppRunner, int]:
    """Start the mock on the running loop; returns the runner (``await runner.cleanup()`` to stop) and the bound port."""
    runner = web.AppRunner(make_mock_app(settings), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=2048).start()
    except BaseException:
        await runner.cleanup()
        raise
    for address in runner.addresses:
        if isinstance(address, tuple):
            return runner, int(address[1])
    await runner.cleanup()
    raise RuntimeError("mock upstream did not bind")


async def _serve(host: str, port: int, settings: MockSettings) -> None:
    runner, bound = await start_mock(host, port, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream listening on http://{host}:{bound}/v1", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_mock(host: str = "127.0.0.1", port: int = 9000, settings: MockSettings | None = None) -> None:
    """Serve until SIGTERM/SIGINT (uvloop when installed); prints the bound URL once listening."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(host, port, settings or MockSettings()))
