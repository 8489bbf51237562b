"""The client's dialect on a public route: how its errors are answered and how the gateway ends its stream.

Three dialects reach the gateway: OpenAI's chat/completions/embeddings
(``OPENAI``), Anthropic's Messages (``ANTHROPIC``: errors in Anthropic's shape,
tollgate/edge/anthropic_errors.py) and OpenAI's Responses API (``RESPONSES``:
OpenAI's error shape, its own stream events). A dialect says

* ``error_answer`` / ``internal_error_answer``: a refused request, whole;
* ``stream_error``: the SSE frame with which the gateway ends a stream it
  cannot finish (a budget cut, a stalled or broken upstream), given a message
  and the gateway's code;
* ``terminal``: the ``type`` of the stream events after which a stream is
  complete (OpenAI's chat streams end with ``data: [DONE]`` instead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from tollgate.edge.answers import Response, error_answer, error_body, internal_error_answer
from tollgate.edge.anthropic_errors import (
    anthropic_error_answer,
    anthropic_error_body,
    anthropic_internal_error_answer,
)
from tollgate.errors import GatewayError

__all__ = ["ANTHROPIC", "OPENAI", "RESPONSES", "Dialect"]


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    error_answer: Callable[[GatewayError, str], Response]
    internal_error_answer: Callable[[str], Response]
    stream_error: Callable[[str, str], bytes]
    terminal: frozenset[str]


def _openai_stream_error(message: str, code: str) -> bytes:
    return b"data: " + error_body(message, "server_error", code) + b"\n\n"


# The gateway's codes for ending a stream, as Anthropic's error types.
_ANTHROPIC_STREAM_TYPES = {
    "token_budget_exceeded": "rate_limit_error",
    "budget_exceeded": "billing_error",
    "upstream_idle_timeout": "timeout_error",
}


def _anthropic_stream_error(message: str, code: str) -> bytes:
    kind = _ANTHROPIC_STREAM_TYPES.get(code, "api_error")
    return b"event: error\ndata: " + anthropic_error_body(kind, f"{message} ({code})") + b"\n\n"


def _responses_stream_error(message: str, code: str) -> bytes:
    doc = {"type": "error", "code": code, "message": message, "param": None}
    return b"event: error\ndata: " + orjson.dumps(doc) + b"\n\n"


OPENAI = Dialect("openai", error_answer, internal_error_answer, _openai_stream_error, frozenset())
ANTHROPIC = Dialect(
    "anthropic",
    anthropic_error_answer,
    anthropic_internal_error_answer,
    _anthropic_stream_error,
    frozenset({"message_stop"}),
)
RESPONSES = Dialect(
    "responses",
    error_answer,
    internal_error_answer,
    _responses_stream_error,
    frozenset({"response.completed", "response.failed", "response.incomplete"}),
)
