"""``GET`` and ``DELETE /v1/responses/{id}``: a stored Responses API response, asked of the upstream that stores it.

The id is the gateway's (tollgate/upstream/response_ids.py): it names the
upstream and the tenant. A caller of another tenant, or an id the gateway did
not give, gets 404 as for any unknown response; the upstream's answer is
relayed with the gateway's ids in it. An upstream refusing the gateway's own
credential is the operator's problem (502, as on every route).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, unquote

from tollgate.clock import Clock
from tollgate.edge.answers import REQUEST_ID_HEADER, Response, error_answer, request_id_from
from tollgate.edge.messages import Request
from tollgate.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamTimeout,
)
from tollgate.identity import authenticate_fresh, client_ip
from tollgate.upstream.client import ConnectError, HttpError
from tollgate.upstream.pool import UpstreamClient, upstream_headers
from tollgate.upstream.redaction import redact
from tollgate.upstream.response_ids import stored_response
from tollgate.upstream.responses_usage import relabeled_response

__all__ = ["RESPONSES_PREFIX", "stored_response_answer"]

log = logging.getLogger("tollgate.responses")

RESPONSES_PREFIX = "/v1/responses/"
_METHODS = ("GET", "DELETE")


async def stored_response_answer(request: Request, state: Any) -> Response:
    """The answer to a ``GET`` or ``DELETE`` of one stored response (``state`` is the ``GatewayState``)."""
    request_id = request_id_from(request.headers.get("x-request-id"))
    try:
        return await _ask(request, state, request_id)
    except GatewayError as exc:
        return error_answer(exc, request_id)


async def _ask(request: Request, state: Any, request_id: str) -> Response:
    method = request.method
    if method not in _METHODS:
        raise MethodNotAllowed(f"{method} is not allowed on {request.path}; use GET or DELETE", allowed=_METHODS)
    principal = await authenticate_fresh(request, state.runtime.identity, state.registry.directory)
    ident = unquote(request.path[len(RESPONSES_PREFIX) :])
    ref = stored_response(ident)
    client: UpstreamClient | None = None
    if ref is not None and ref.tenant == principal.tenant:
        client = state.pool.clients.get(ref.upstream)
    if ref is None or client is None or client.http is None:
        raise NotFound(f"no response with id {ident[:200]!r}", param="response_id", code="response_not_found")
    prefix = "/openai/v1" if client.config.provider == "azure" else ""
    path = f"{prefix}/responses/{quote(ref.id, safe='')}"
    clock: Clock = state.clock
    cfg = client.config
    try:
        async with client.deadlines.at(clock.loop_time() + cfg.timeouts.total):
            sent = upstream_headers(
                client, request.headers, client_ip(request, state.runtime.stages.proxies), request_id
            )
            upstream = await client.http.request(method, path, sent, b"")
            try:
                status, data = upstream.status, await upstream.read()
                content_type = upstream.headers.get("content-type", "application/json")
            finally:
                upstream.release()
    except TimeoutError:
        raise UpstreamTimeout(f"upstream {cfg.name!r} timed out", code="upstream_timeout") from None
    except ConnectError as exc:
        raise UpstreamBadResponse(
            f"cannot connect to upstream {cfg.name!r}: {exc}", code="upstream_connect_error"
        ) from None
    except HttpError as exc:
        raise UpstreamBadResponse(f"upstream {cfg.name!r} failed: {exc}", code="upstream_error") from None
    if status in (401, 403):
        text = redact(data[:2000], client.secrets, shapes=False).decode("utf-8", "replace")
        log.error(
            "upstream %r refused the gateway's credential (%d) on request %s: %s", cfg.name, status, request_id, text
        )
        raise UpstreamAuthError(cfg.name, status, text)
    if status == 200:
        data, _usage = relabeled_response(data, ref.upstream, ref.tenant)  # a deletion's id too
    else:
        data = redact(data, client.secrets)
    return Response(status, data, {"Content-Type": content_type, REQUEST_ID_HEADER: request_id})
