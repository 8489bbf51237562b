"""The mock's faults: the front every POST endpoint passes (count, record, parse, latency, injected errors) and the SSE writer (pacing, cut, stall, malformed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NoReturn

import orjson
from aiohttp import web

from tollgate.mock.settings import MockSettings, knobs_for
from tollgate.mock.state import MockState

__all__ = ["openai_error", "receive", "stream_events"]

_JSON = "application/json"
_SSE_HEADERS = MappingProxyType({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
_MALFORMED_EVENT = b'data: {"id": "chatcmpl-malformed", "choices": [{"delta": {"content": "unterminated\n\n'

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


def openai_error(
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
        return openai_error(400, "We could not parse the JSON body of your request.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return openai_error(400, "you must provide a model parameter", param="model")
    return body


async def receive(request: web.Request, state: MockState) -> tuple[dict[str, Any], MockSettings] | web.StreamResponse:
    """Common front of the POST endpoints: count, record, parse, apply latency and injected errors."""
    state.stats["requests"] += 1
    try:
        knobs = knobs_for(request.raw_headers, state.settings)
    except (ValueError, TypeError) as exc:
        return openai_error(400, f"bad x-mock header: {exc}")
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
        return openai_error(status, retry_after=knobs.retry_after)
    if not body.get("stream"):
        if knobs.cut_after is not None:
            _abort(request)
            return web.Response(status=204)  # never sent: the connection is already gone
        if knobs.stall_after is not None:
            await _wait_for_client_to_leave()
    return body, knobs


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _wait_for_client_to_leave() -> NoReturn:
    """Send nothing until the client closes the connection, which cancels the handler.

    The mock's runners cancel a handler whose client left: :func:`~tollgate.mock.upstream.start_mock`
    and aiohttp's test server both serve with ``handler_cancellation=True``.
    """
    await asyncio.get_running_loop().create_future()  # never resolved: only the cancellation ends the wait
    raise AssertionError("unreachable: the wait ends by cancellation")


async def stream_events(
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
                await _wait_for_client_to_leave()  # the client leaving is counted below, by the cancellation
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
