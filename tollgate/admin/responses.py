"""The gateway's answers (tollgate/edge/answers.py) as aiohttp responses, for the admin listener.

The public listener writes :class:`~tollgate.edge.answers.Response` objects itself; only the admin API is an
aiohttp application, so aiohttp is imported where the admin API is, by the process that serves it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tollgate.edge.answers import Response, error_answer, internal_error_answer, json_answer
from tollgate.errors import GatewayError

__all__ = ["as_aiohttp", "error_response", "internal_error_response", "json_response"]


def as_aiohttp(answer: Response) -> web.Response:
    """The same answer as an aiohttp response."""
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


def error_response(exc: GatewayError, request_id: str) -> web.Response:
    """:func:`~tollgate.edge.answers.error_answer` as an aiohttp response."""
    return as_aiohttp(error_answer(exc, request_id))


def internal_error_response(request_id: str) -> web.Response:
    """:func:`~tollgate.edge.answers.internal_error_answer` as an aiohttp response."""
    return as_aiohttp(internal_error_answer(request_id))


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """:func:`~tollgate.edge.answers.json_answer` as an aiohttp response."""
    return as_aiohttp(json_answer(data, status=status, headers=headers))
