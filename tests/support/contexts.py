"""A real :class:`RequestContext` for tests that hand one to a stage or to accounting: compiled, the stages accept
nothing else (a stand-in object is refused with a TypeError)."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.edge.messages import Body, Request
from tollgate.pipeline.context import ENDPOINTS, RequestContext

__all__ = ["request_context"]


class _NoConnection:
    """The connection of a body that has all arrived: nothing is ever asked of it."""

    def body_wanted(self, body: Body) -> None:
        return None


def request_context(
    path: str = "/v1/chat/completions",
    *,
    request_id: str = "req_test",
    started: float = 0.0,
    client_ip: str = "127.0.0.1",
    body: bytes = b"",
    **fields: Any,
) -> RequestContext:
    """The context of a POST to ``path`` whose ``body`` has arrived, with ``fields`` set as the stages would set them
    (``status``, ``usage``, ``principal``, ...); ``body_bytes`` is ``body``."""
    content = Body(_NoConnection(), True, False)  # type: ignore[arg-type]
    if body:
        content.feed(body)
    headers = CIMultiDictProxy(CIMultiDict({"Host": "gateway", "Content-Type": "application/json"}))
    request = Request("POST", path, "", 1, headers, (), None, len(body), False, True, content, client_ip)  # type: ignore[arg-type]
    ctx = RequestContext(request, request_id, ENDPOINTS.get(path), started, client_ip)
    ctx.body_bytes = body
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx
