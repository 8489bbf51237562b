"""Guard stage: header and body size limits, then the JSON body parsed once (an upload's form fields scanned once).

An upload route (``Endpoint.multipart``: audio transcriptions) takes a
``multipart/form-data`` body up to ``guard.max_upload_bytes``; its text
fields, never its files, become ``ctx.body`` for the stages after (matchers,
limits), and ``ctx.body_bytes`` stays the bytes the upstream gets.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import orjson

from tollgate.config.model import Guard
from tollgate.edge.messages import Request
from tollgate.edge.multipart import form_boundary, scan_form
from tollgate.errors import BadRequest, HeadersTooLarge, PayloadTooLarge
from tollgate.pipeline.context import RequestContext

__all__ = ["check_headers", "guard", "header_room"]

_READ_CHUNK = 64 * 1024
# The text fields of an upload kept in ``ctx.body`` (the first ones; the rest still reach the upstream).
_MAX_FORM_FIELDS = 32
# Form fields whose repeats would let the gateway and the upstream read different values: refused.
_SINGLE_FIELDS = ("model", "stream")


def header_room(max_header_bytes: int) -> int:
    """The HTTP server's cap on a request head, above ours, so that the guard answers 431 with the limit in force."""
    return max(2 * max_header_bytes, 64 * 1024)


def check_headers(request: Request, limits: Guard) -> None:
    size = 0
    for name, value in request.raw_headers:
        size += len(name) + len(value) + 4
    if size > limits.max_header_bytes:
        raise HeadersTooLarge(
            f"request headers are {size} bytes; the limit is {limits.max_header_bytes} bytes",
        )


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit} bytes")
        return await request.read()
    # Chunked upload: read only up to the limit, never the whole thing.
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(_READ_CHUNK)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)


def _parse(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    return doc


def _form(raw: bytes, boundary: bytes) -> dict[str, Any]:
    """An upload's text fields by name (a list when repeated), the first :data:`_MAX_FORM_FIELDS` names."""
    body: dict[str, Any] = {}
    for field in scan_form(raw, boundary):
        name = field.name
        if name in body:
            if name in _SINGLE_FIELDS:
                raise BadRequest(f"the form field {name} is given more than once", param=name, code="invalid_form")
            previous = body[name]
            body[name] = [*previous, field.value] if isinstance(previous, list) else [previous, field.value]
        elif len(body) < _MAX_FORM_FIELDS or name in _SINGLE_FIELDS:
            body[name] = field.value
    return body


def guard(ctx: RequestContext, limits: Guard) -> Awaitable[None] | None:
    """Fill ``body_bytes``, ``body``, ``model`` and ``stream``, or refuse the request.

    A body within the limit that has all arrived (the usual JSON one) is taken at once, without a coroutine:
    None then. Otherwise the awaitable that reads the body and does the rest."""
    request = ctx.request
    endpoint = ctx.endpoint
    check_headers(request, limits)
    if endpoint is None or not endpoint.multipart:
        length = request.content_length
        whole = request.content.whole() if length is not None and length <= limits.max_body_bytes else None
        if whole is not None:
            ctx.body_bytes = whole
            _fill(ctx, _parse(whole))
            return None
    return _guard_reading(ctx, limits)


async def _guard_reading(ctx: RequestContext, limits: Guard) -> None:
    """:func:`guard` for a body still to be read (or an upload's)."""
    request = ctx.request
    endpoint = ctx.endpoint
    if endpoint is not None and endpoint.multipart:
        # The content type first: a body that cannot be a form is refused before it is read.
        boundary = form_boundary(request.headers.get("Content-Type"))
        ctx.body_bytes = await _read_body(request, limits.max_upload_bytes)
        body = ctx.body = _form(ctx.body_bytes, boundary)
    else:
        ctx.body_bytes = await _read_body(request, limits.max_body_bytes)
        body = _parse(ctx.body_bytes)
    _fill(ctx, body)


def _fill(ctx: RequestContext, body: dict[str, Any]) -> None:
    """``body``, ``model`` and ``stream`` from the request's body, or the request refused."""
    ctx.body = body
    endpoint = ctx.endpoint
    model = body.get("model")
    if model is None and endpoint is not None:
        model = endpoint.default_model  # the body is left as it came: the upstream applies its own default
    if model is None:
        raise BadRequest("you must provide a model parameter", param="model", code="missing_model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string", param="model", code="invalid_model")
    ctx.model = model
    if endpoint is not None and endpoint.multipart:
        return  # a form's stream field is text the upstream reads; the gateway relays uploads' answers whole
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise BadRequest("stream must be true or false", param="stream", code="invalid_type")
    ctx.stream = bool(stream) and ctx.endpoint is not None and ctx.endpoint.streams
