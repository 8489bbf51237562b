"""Error bodies and statuses: Anthropic's ``{"type": "error", "error": {type, message}}`` ↔ OpenAI's ``{"error": {message, type, code, param}}``.

Each function takes the upstream's status and body and returns the status and body to answer in
the other dialect. Anthropic's vocabulary (https://docs.claude.com/en/api/errors):

    400 invalid_request_error   401 authentication_error   402 billing_error   403 permission_error
    404 not_found_error         413 request_too_large      429 rate_limit_error
    500 api_error               504 timeout_error          529 overloaded_error

OpenAI's is the gateway's own (tollgate/errors.py): ``invalid_request_error`` with a code for the
4xx, ``requests`` / ``rate_limit_exceeded`` for a rate limit, ``insufficient_quota`` for a spent
budget, ``server_error`` for the rest. Anthropic's 529 is answered 503 in OpenAI's vocabulary.
"""

from __future__ import annotations

from typing import Any

from tollgate.edge.anthropic_errors import ANTHROPIC_STATUS, ANTHROPIC_TYPE_BY_STATUS

__all__ = ["anthropic_error_to_openai", "anthropic_status_for", "openai_error_to_anthropic"]

# Anthropic error type → (OpenAI status, OpenAI type, OpenAI code)
_TO_OPENAI: dict[str, tuple[int, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "invalid_request_error", "invalid_api_key"),
    "billing_error": (429, "insufficient_quota", "insufficient_quota"),
    "permission_error": (403, "invalid_request_error", "forbidden"),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "requests", "rate_limit_exceeded"),
    "api_error": (500, "server_error", None),
    "timeout_error": (504, "server_error", "timeout"),
    "overloaded_error": (503, "server_error", "overloaded"),
}


def anthropic_status_for(error_type: str) -> int:
    """The status Anthropic answers an error ``type`` with (500 for a type it has not documented)."""
    return ANTHROPIC_STATUS.get(error_type, 500)


def _message(error: dict[str, Any], fallback: str) -> str:
    message = error.get("message")
    return message if isinstance(message, str) and message else fallback


def anthropic_error_to_openai(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body for an Anthropic error answer (a body not in Anthropic's shape keeps its status)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    kind = error.get("type")
    known = _TO_OPENAI.get(kind) if isinstance(kind, str) else None
    if known is None:
        openai_status = status if status >= 400 else 500
        openai_type = "invalid_request_error" if 400 <= openai_status < 500 else "server_error"
        code = None
    else:
        openai_status, openai_type, code = known
    message = _message(error, f"upstream answered {status}")
    return openai_status, {"error": {"message": message, "type": openai_type, "code": code, "param": None}}


def openai_error_to_anthropic(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """The status and Anthropic error body for an OpenAI error answer, by its status (and ``insufficient_quota``)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    if error.get("type") == "insufficient_quota" or error.get("code") == "insufficient_quota":
        kind = "billing_error"
    elif status in ANTHROPIC_TYPE_BY_STATUS:
        kind = ANTHROPIC_TYPE_BY_STATUS[status]
    else:
        kind = "invalid_request_error" if 400 <= status < 500 else "api_error"
    if kind in ("overloaded_error", "billing_error"):
        anthropic_status = ANTHROPIC_STATUS[kind]
    else:
        anthropic_status = status if status >= 400 else 500
    message = _message(error, f"upstream answered {status}")
    return anthropic_status, {"type": "error", "error": {"type": kind, "message": message}}
