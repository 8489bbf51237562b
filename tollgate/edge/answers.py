"""The HTTP edge: the one place that turns gateway errors into answers, with their class's status and OpenAI-shaped JSON.

The public listener answers with :class:`Response` objects, which its HTTP
server (tollgate/edge/server.py) writes as they are: ``error_answer``,
``internal_error_answer`` and ``json_answer`` make them. The admin listener,
an aiohttp application, turns the same answers into aiohttp responses
(tollgate/admin/responses.py): nothing here imports aiohttp, which a worker
that does not serve the admin API never loads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from random import getrandbits
from typing import Any, Final

import orjson

from tollgate.errors import GatewayError

__all__ = [
    "REQUEST_ID_HEADER",
    "Response",
    "error_answer",
    "error_body",
    "internal_error_answer",
    "json_answer",
    "new_request_id",
    "request_id_from",
    "status_for",
]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def status_for(exc: GatewayError) -> int:
    """The HTTP status of ``exc``: its class says (tollgate/errors.py)."""
    return exc.http_status


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type, "code": code, "param": param}})


class Response:
    """A complete answer of the public listener: status, headers, body, written in one piece by the HTTP server."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int = 200, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


_JSON = "application/json"


def error_answer(exc: GatewayError, request_id: str) -> Response:
    """The OpenAI-shaped error for ``exc``, with its status and headers (``Retry-After``...)."""
    headers = {"Content-Type": _JSON, REQUEST_ID_HEADER: request_id, **exc.headers}
    return Response(status_for(exc), error_body(exc.message, exc.error_type, exc.code, exc.param), headers)


def internal_error_answer(request_id: str) -> Response:
    """A bug on our side: say so without a traceback, and point at the request id in our logs."""
    message = f"internal gateway error; quote request id {request_id} when reporting it"
    return Response(
        500,
        error_body(message, "server_error", "internal_error"),
        {"Content-Type": _JSON, REQUEST_ID_HEADER: request_id},
    )


def json_answer(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(data), {"Content-Type": _JSON, **(headers or {})})


class _RequestIds:
    """Request ids drawn :data:`_BATCH` at a time: one call of the generator for many ids instead of one each (one
    instance, :data:`_IDS`; a forked worker forgets the ids its parent drew, so that no two processes hand out the
    same ones)."""

    __slots__ = ("drawn", "at")

    def __init__(self) -> None:
        self.drawn = ""  # the hex digits of the batch drawn last
        self.at = 0  # where the next id's digits begin in it

    def next(self) -> str:
        at = self.at
        drawn = self.drawn
        if at >= len(drawn):
            drawn = self.drawn = getrandbits(96 * _BATCH).to_bytes(12 * _BATCH, "big").hex()
            at = 0
        self.at = at + 24
        return "req_" + drawn[at : at + 24]

    def forget(self) -> None:
        self.drawn = ""
        self.at = 0


_BATCH: Final = 256
_IDS: Final = _RequestIds()
os.register_at_fork(after_in_child=_IDS.forget)


def new_request_id() -> str:
    """``req_`` and 96 random bits in hex: unique, not secret (the process's generator, reseeded in a forked worker,
    spares a ``getrandom`` system call per request; drawn for 256 ids at a time)."""
    return _IDS.next()


def request_id_from(value: str | None) -> str:
    """Keep a client's well-formed ``x-request-id``; otherwise make one."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()
