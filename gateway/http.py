"""The HTTP edge: the one place that maps gateway errors to statuses and OpenAI-shaped JSON bodies."""

from __future__ import annotations

import os
import re
from typing import Any

import orjson
from aiohttp import web

from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    StoreError,
    Unauthenticated,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "status_for",
    "error_body",
    "error_response",
    "internal_error_response",
    "json_response",
    "request_id_from",
    "new_request_id",
    "REQUEST_ID_HEADER",
]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Most specific class first: the first match wins.
_STATUS: tuple[tuple[type[GatewayError], int], ...] = (
    (HeadersTooLarge, 431),
    (PayloadTooLarge, 413),
    (MethodNotAllowed, 405),
    (NotFound, 404),
    (Conflict, 409),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (RateLimited, 429),
    (BadRequest, 400),
    (UpstreamTimeout, 504),
    (UpstreamUnavailable, 503),
    (UpstreamBadResponse, 502),
    (UpstreamError, 502),
    (Overloaded, 503),
    (StoreError, 503),
)


def status_for(exc: GatewayError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type, "code": code, "param": param}})


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id, **exc.headers}
    return web.Response(
        status=status_for(exc),
        body=error_body(exc.message, exc.error_type, exc.code, exc.param),
        content_type="application/json",
        headers=headers,
    )


def internal_error_response(request_id: str) -> web.Response:
    """A bug on our side: say so without a traceback, and point at the request id in our logs."""
    return web.Response(
        status=500,
        body=error_body(
            f"internal gateway error; quote request id {request_id} when reporting it",
            "api_error",
            "internal_error",
        ),
        content_type="application/json",
        headers={REQUEST_ID_HEADER: request_id},
    )


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def request_id_from(value: str | None) -> str:
    """Keep a client's well-formed ``x-request-id``; otherwise make one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()

