"""Errors in Anthropic's shape, for the routes Anthropic's clients call: ``{"type": "error", "error": {type, message}}``.

Anthropic's vocabulary (https://docs.claude.com/en/api/errors) pairs each error
type with one status:

    400 invalid_request_error   401 authentication_error   402 billing_error   403 permission_error
    404 not_found_error         413 request_too_large      429 rate_limit_error
    500 api_error               504 timeout_error          529 overloaded_error

:func:`anthropic_error_answer` answers a gateway error with the type of its
status and the status Anthropic pairs with that type where the two differ
(the gateway's 503 is Anthropic's 529 ``overloaded_error``, which its SDKs
retry; a spent money budget is 402 ``billing_error``, which they do not); other statuses (a 502, a 405) keep theirs. Headers (``Retry-After``,
``x-should-retry``) are the error's own, which Anthropic's SDKs read as
OpenAI's do. The translation of a provider's error body from one dialect to
the other (tollgate/upstream/translate/errors.py) reads the same tables.
"""

from __future__ import annotations

import orjson

from tollgate.edge.answers import REQUEST_ID_HEADER, Response
from tollgate.errors import GatewayError

__all__ = [
    "ANTHROPIC_STATUS",
    "ANTHROPIC_TYPE_BY_STATUS",
    "anthropic_error_answer",
    "anthropic_error_body",
    "anthropic_error_type",
    "anthropic_internal_error_answer",
]

# Anthropic error type → the status Anthropic answers it with.
ANTHROPIC_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
# An HTTP status → the Anthropic error type that says it (4xx and 5xx not listed: invalid_request_error, api_error).
ANTHROPIC_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_JSON = "application/json"
# The types whose status the gateway's differs from (503, 429): answered with Anthropic's.
_PAIRED = frozenset({"overloaded_error", "billing_error"})


def anthropic_error_type(status: int) -> str:
    """The Anthropic error type of an HTTP status."""
    kind = ANTHROPIC_TYPE_BY_STATUS.get(status)
    if kind is not None:
        return kind
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_body(error_type: str, message: str, request_id: str | None = None) -> bytes:
    doc: dict[str, object] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        doc["request_id"] = request_id
    return orjson.dumps(doc)


def anthropic_error_answer(exc: GatewayError, request_id: str) -> Response:
    """The Anthropic-shaped error for ``exc``: the type of its status, Anthropic's status for that type where it has one."""
    if exc.error_type == "insufficient_quota":  # a spent money budget: billing, which no SDK retries
        kind = "billing_error"
    else:
        kind = anthropic_error_type(exc.http_status)
    status = ANTHROPIC_STATUS[kind] if kind in _PAIRED else exc.http_status
    headers = {"Content-Type": _JSON, REQUEST_ID_HEADER: request_id, **exc.headers}
    return Response(status, anthropic_error_body(kind, exc.message, request_id), headers)


def anthropic_internal_error_answer(request_id: str) -> Response:
    """A bug on our side, in Anthropic's shape: no traceback, the request id to quote."""
    message = f"internal gateway error; quote request id {request_id} when reporting it"
    return Response(
        500,
        anthropic_error_body("api_error", message, request_id),
        {"Content-Type": _JSON, REQUEST_ID_HEADER: request_id},
    )
