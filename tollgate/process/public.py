"""The public listener's routes, on the gateway's own HTTP server (``tollgate/edge/server.py``); the admin listener is an aiohttp application.

The public side dispatches by exact path from one dict: it has only a
handful of fixed paths, and a few prefixes (a model, a stored response, the
tenant self-service routes of ``self_service.py``). ``public_lifecycle`` (from ``lifecycle.py``, an async
generator, which mypyc does not compile) opens the gateway's resources before the listener serves and closes them
after it has drained.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from tollgate.accounting.logs import SERVING
from tollgate.edge.answers import Response, error_answer, internal_error_answer, json_answer, request_id_from
from tollgate.edge.messages import Handler, Request
from tollgate.edge.server import REFUSALS, HttpServer
from tollgate.errors import GatewayError, MethodNotAllowed, NotFound
from tollgate.identity import Principal, authenticate_fresh
from tollgate.pipeline.context import ENDPOINTS
from tollgate.pipeline.handler import make_proxy_handler
from tollgate.process.lifecycle import public_lifecycle
from tollgate.process.self_service import SELF_SERVICE_PREFIX, self_service_answer
from tollgate.process.stored_responses import RESPONSES_PREFIX, stored_response_answer
from tollgate.runtime.state import GatewayState

__all__ = ["healthz", "make_public_handler", "make_public_server", "public_lifecycle", "readyz"]

log = logging.getLogger("tollgate.app")

_MODELS_PREFIX = "/v1/models/"


def make_public_handler(state: GatewayState) -> Handler:
    """The client-facing handler: each known path maps to the handler of its one method, anything else to 404/405."""
    routes: dict[str, tuple[str, Callable[..., Awaitable[Any]]]] = {}
    for path, endpoint in ENDPOINTS.items():
        routes[path] = ("POST", make_proxy_handler(endpoint, state))
    routes["/v1/models"] = ("GET", _list_models)
    routes["/healthz"] = ("GET", healthz)
    routes["/readyz"] = ("GET", readyz)

    # A plain function handing back the awaitable of the route's handler: no coroutine layer of its own, which
    # every request would pay for on each of its resumptions.
    def handle(request: Request) -> Awaitable[Any]:
        path = request.path
        route = routes.get(path)
        method = request.method
        if route is not None:
            allowed, handler = route
            if method == allowed or (method == "HEAD" and allowed == "GET"):
                if allowed == "POST":
                    return handler(request)  # the proxy pipeline answers every error itself
                return _answer(handler, request, state)
            return _ready(
                _refuse(
                    MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}", allowed=(allowed,)), request
                )
            )
        if path.startswith(SELF_SERVICE_PREFIX):
            return _answer(self_service_answer, request, state)
        if path.startswith(RESPONSES_PREFIX) and len(path) > len(RESPONSES_PREFIX):
            return _answer(stored_response_answer, request, state)
        if path.startswith(_MODELS_PREFIX) and len(path) > len(_MODELS_PREFIX):
            if method in ("GET", "HEAD"):
                return _answer(_get_model, request, state)
            return _ready(
                _refuse(MethodNotAllowed(f"{method} is not allowed on {path}; use GET", allowed=("GET",)), request)
            )
        return _ready(_refuse(NotFound(f"unknown path {path}", code="unknown_url"), request))

    return handle


def make_public_server(state: GatewayState, *, max_head: int = 64 * 1024) -> HttpServer:
    """The public listener's server around :func:`make_public_handler` (not yet listening: see ``HttpServer.start``).

    Its time limit on a request head and its cap on open connections come from
    the config's ``server:`` section; what it refuses itself is counted in
    ``tollgate_http_refused_total{reason}``.
    """
    settings = state.config.server
    metrics = state.accounting.metrics
    for reason in REFUSALS:
        metrics.http_refused(reason, 0)  # every reason shows from the first scrape, at 0
    return HttpServer(
        make_public_handler(state),
        max_head=max_head,
        head_timeout=settings.head_timeout,
        max_connections=settings.max_connections,
        on_refused=metrics.http_refused,
    )


async def _ready(answer: Response) -> Response:
    return answer


def _refuse(exc: GatewayError, request: Request) -> Response:
    return error_answer(exc, request_id_from(request.headers.get("x-request-id")))


async def _answer(handler: Callable[..., Awaitable[Response]], request: Request, state: GatewayState) -> Response:
    # A connection's requests share its task (tollgate/edge/server.py): a proxy request before this one on the same
    # connection left its id there, which the lines logged while this one is served must not carry.
    SERVING.set(None)
    try:
        return await handler(request, state)
    except Exception:  # a bug: JSON with the request id, never a traceback
        request_id = request_id_from(request.headers.get("x-request-id"))
        log.exception("unexpected error on request %s", request_id)
        return internal_error_answer(request_id)


def _model_entry(name: str, state: GatewayState) -> dict[str, object]:
    model = state.config.models[name]
    return {"id": name, "object": "model", "created": model.created, "owned_by": model.owned_by}


async def _principal(request: Request, state: GatewayState) -> Principal:
    return await authenticate_fresh(request, state.runtime.identity, state.registry.directory)


async def _list_models(request: Request, state: GatewayState) -> Response:
    try:
        principal = await _principal(request, state)
    except GatewayError as exc:
        return _refuse(exc, request)
    data = [_model_entry(name, state) for name in state.config.models if principal.may_use(name)]
    return json_answer({"object": "list", "data": data})


async def _get_model(request: Request, state: GatewayState) -> Response:
    name = unquote(request.path[len(_MODELS_PREFIX) :])
    try:
        principal = await _principal(request, state)
    except GatewayError as exc:
        return _refuse(exc, request)
    if name not in state.config.models or not principal.may_use(name):
        missing = NotFound(
            f"the model {name!r} does not exist or you do not have access to it", param="model", code="model_not_found"
        )
        return _refuse(missing, request)
    return json_answer(_model_entry(name, state))


# The probes answer the admin listener too, whose requests are aiohttp's: they take any request (and read none).
async def healthz(request: object, state: GatewayState | None = None) -> Response:
    return json_answer({"status": "ok"})


async def readyz(request: object, state: GatewayState) -> Response:
    """503 while the gateway cannot serve: no model has a usable deployment. A model without a usable deployment
    (breaker open, failing its health probes) or a store that does not answer (the limiter's Redis, the database,
    the registry) leaves it serving, degraded: 200 naming them, so that a load balancer does not take every gateway
    out of service for an outage they ride out (fallbacks, limits by their fail modes, records buffered).
    ``models`` says for each configured model whether it has a usable deployment."""
    problems: list[str]
    stores: list[str]
    # gather answers a list where its stub says a tuple, which a compiled unpacking would check: called untyped.
    gather: Any = asyncio.gather
    problems, stores = await gather(state.readiness_problems(), state.store_problems())
    models = state.servable_models()
    degraded = [f"model {name!r} has no usable deployment" for name, ok in models.items() if not ok] + stores
    if problems:
        return json_answer({"status": "not ready", "problems": problems + stores, "models": models}, status=503)
    version = state.runtime.version
    if degraded:
        return json_answer({"status": "degraded", "config_version": version, "degraded": degraded, "models": models})
    return json_answer({"status": "ready", "config_version": version, "models": models})
