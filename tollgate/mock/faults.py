"""The mock's faults: the front every POST endpoint passes (count, record, parse, latency, injected errors) and the SSE writer (pacing, cut, stall, malformed).

Bodies are JSON, or ``multipart/form-data`` (audio uploads): a form is parsed
with aiohttp's reader into its text fields, a file field becoming
``{"filename", "content_type", "size"}`` (recorded so, never its bytes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import EllipsisType, MappingProxyType
from typing import Any, NoReturn

import orjson
from aiohttp import BodyPartReader, web

from tollgate.mock.settings import MockSettings, knobs_for
from tollgate.mock.state import MockState

__all__ = ["openai_error", "receive", "record", "stream_events"]

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
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    retry_after: int | None = None,
    code: str | EllipsisType | None = ...,
) -> web.Response:
    """An error in OpenAI's shape; ``code`` defaults to the one OpenAI sends with ``status``."""
    kind, default_code, default_message = _ERROR_KINDS.get(
        status,
        (
            "server_error" if status >= 500 else "invalid_request_error",
            None,
            f"Error {status} (injected by the mock upstream).",
        ),
    )
    error = {
        "message": message or default_message,
        "type": kind,
        "param": param,
        "code": default_code if code is ... else code,
    }
    body = orjson.dumps({"error": error})
    headers = {"Content-Type": _JSON}
    if status == 429 and retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.Response(status=status, body=body, headers=headers)


async def _read_form(request: web.Request) -> dict[str, Any] | None:
    """A ``multipart/form-data`` body: text fields by name (a list when repeated), files as their name, type and size."""
    form: dict[str, Any] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or not part.name:
                continue
            value: Any
            if part.filename is not None:
                size = 0
                while chunk := await part.read_chunk():
                    size += len(chunk)
                value = {"filename": part.filename, "content_type": part.headers.get("Content-Type"), "size": size}
            else:
                value = await part.text()
            if part.name in form:
                previous = form[part.name]
                form[part.name] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                form[part.name] = value
    except (ValueError, AssertionError, UnicodeDecodeError):
        return None
    return form


def record(request: web.Request, state: MockState, body: Any) -> None:
    """Keep the request in ``/_mock/requests`` (when recording): time, method, path, query, headers and ``body``."""
    if state.settings.record:
        state.requests.append(
            {
                "time": time.time(),
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body,
            }
        )


async def _read_body(request: web.Request, state: MockState, model_required: bool) -> dict[str, Any] | web.Response:
    if request.content_type == "multipart/form-data":
        body: Any = await _read_form(request)
        recorded: Any = body
    else:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
            recorded = raw.decode(errors="replace")
        else:
            recorded = body
    record(request, state, recorded)
    if not isinstance(body, dict):
        kind = "multipart form" if request.content_type == "multipart/form-data" else "JSON body"
        return openai_error(400, f"We could not parse the {kind} of your request.")
    model = body.get("model")
    if (model_required or model is not None) and (not isinstance(model, str) or not model):
        return openai_error(400, "you must provide a model parameter", param="model")
    return body


async def receive(
    request: web.Request, state: MockState, *, model_required: bool = True
) -> tuple[dict[str, Any], MockSettings] | web.StreamResponse:
    """Common front of the POST endpoints: count, record, parse, apply latency and injected errors.

    The body is JSON, or a ``multipart/form-data`` form (module docstring); it must
    be an object with a ``model`` string unless ``model_required`` is false (then
    a ``model``, if given, must still be a string).
    """
    state.stats["requests"] += 1
    try:
        knobs = knobs_for(request.raw_headers, state.settings)
    except (ValueError, TypeError) as exc:
        return openai_error(400, f"bad x-mock header: {exc}")
    body = await _read_body(request, state, model_required)
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
    request: web.Request,
    state: MockState,
    knobs: MockSettings,
    events: list[bytes],
    paced_from: int,
    paced_to: int | None = None,
) -> web.StreamResponse:
    """Send SSE ``events`` one by one (each written and drained), applying pacing, cut, stall and malformed faults.

    ``events[paced_from:paced_to]`` are content deltas, paced by ``tokens_per_second``;
    ``paced_to`` defaults to the last event (``[DONE]`` on the OpenAI routes).
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
        paced_end = len(events) - 1 if paced_to is None else paced_to
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
            if interval and paced_from <= index < paced_end:
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
