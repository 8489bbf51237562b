"""The public listener's routes, served by aiohttp's low-level server; the admin listener is an aiohttp application.

The public side dispatches by exact path from one dict instead of an
``aiohttp.web.Application``: the application's router, middleware chain and
request wrapper cost about 8 µs per request on a benchmark core (about a
fifth of aiohttp's whole server-side cost), and the public listener has only
a handful of fixed paths. ``public_lifecycle`` does what the application's
cleanup contexts did: open the gateway's resources before serving and close
them after the listener has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from .context import ENDPOINTS
from .errors import GatewayError, MethodNotAllowed, NotFound
from .http import error_response, internal_error_response, json_response, request_id_from
from .identity import Principal, authenticate, registry_watching
from .proxy import make_proxy_handler
from .runtime import GatewayState

__all__ = ["make_public_handler", "make_public_server", "public_lifecycle", "healthz", "readyz"]

log = logging.getLogger("tollgate.app")

# Bodies are size-checked by the guard stage against the live config; aiohttp's own cap stays out of the way.
_NO_AIOHTTP_BODY_CAP = 1 << 40
_MODELS_PREFIX = "/v1/models/"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def make_public_handler(state: GatewayState) -> Handler:
    """The client-facing handler: each known path maps to the handler of its one method, anything else to 404/405."""
    routes: dict[str, tuple[str, Callable[..., Awaitable[web.StreamResponse]]]] = {}
    for path, endpoint in ENDPOINTS.items():
        routes[path] = ("POST", make_proxy_handler(endpoint, state))
    routes["/v1/models"] = ("GET", _list_models)
    routes["/healthz"] = ("GET", healthz)
    routes["/readyz"] = ("GET", readyz)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        route = routes.get(path)
        method = request.method
        if route is not None:
            allowed, handler = route
            if method == allowed or (method == "HEAD" and allowed == "GET"):
                if allowed == "POST":
                    return await handler(request)  # the proxy pipeline answers every error itself
                return await _answer(handler, request, state)
            return _refuse(MethodNotAllowed(f"{method} is not allowed on {path}; use {allowed}", allowed=(allowed,)), request)
        if path.startswith(_MODELS_PREFIX) and len(path) > len(_MODELS_PREFIX):
            if method in ("GET", "HEAD"):
                return await _answer(_get_model, request, state)
            return _refuse(MethodNotAllowed(f"{method} is not allowed on {path}; use GET", allowed=("GET",)), request)
        return _refuse(NotFound(f"unknown path {path}", code="unknown_url"), request)

    return handle


def _request_factory(server: web.Server) -> Callable[..., web.BaseRequest]:
    loop = asyncio.get_running_loop()

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=_NO_AIOHTTP_BODY_CAP)

    return make


def make_public_server(state: GatewayState, **kwargs: Any) -> web.Server:
    """aiohttp's low-level server around :func:`make_public_handler`; ``kwargs`` go to its connection handlers."""
    server = web.Server(make_public_handler(state), handler_cancellation=True, access_log=None, **kwargs)
    server.request_factory = _request_factory(server)
    return server


@contextlib.asynccontextmanager
async def public_lifecycle(state: GatewayState) -> AsyncIterator[None]:
    """Open the gateway's resources and follow the tenant registry while serving; close them afterwards."""
    await state.start()
    try:
        async with registry_watching(state.registry):
            yield
    finally:
        await state.close()


def _refuse(exc: GatewayError, request: web.BaseRequest) -> web.Response:
    return error_response(exc, request_id_from(request.headers.get("x-request-id")))


async def _answer(handler: Callable[..., Awaitable[web.StreamResponse]], request: web.BaseRequest, state: GatewayState) -> web.StreamResponse:
    try:
        return await handler(request, state)
    except Exception:  # a bug: JSON with the request id, never a traceback or aiohttp's plain-text 500
        request_id = request_id_from(request.headers.get("x-request-id"))
        log.exception("unexpected error on request %s", request_id)
        return internal_error_response(request_id)


def _model_entry(name: str, state: GatewayState) -> dict[str, object]:
    model = state.config.models[name]
    return {"id": name, "object": "model", "created": model.created, "owned_by": model.owned_by}


def _principal(request: web.BaseRequest, state: GatewayState) -> Principal:
    return authenticate(request, state.runtime.identity, state.registry.directory)


async def _list_models(request: web.BaseRequest, state: GatewayState) -> web.Response:
    try:
        principal = _principal(request, state)
    except GatewayError as exc:
        return error_response(exc, request_id_from(request.headers.get("x-request-id")))
    data = [_model_entry(name, state) for name in state.config.models if principal.may_use(name)]
    return json_response({"object": "list", "data": data})


async def _get_model(request: web.BaseRequest, state: GatewayState) -> web.Response:
    name = request.path[len(_MODELS_PREFIX) :]
    try:
        principal = _principal(request, state)
    except GatewayError as exc:
        return error_response(exc, request_id_from(request.headers.get("x-request-id")))
    if name not in state.config.models or not principal.may_use(name):
        exc = NotFound(f"the model {name!r} does not exist or you do not have access to it", param="model", code="model_not_found")
        return error_response(exc, request_id_from(request.headers.get("x-request-id")))
    return json_response(_model_entry(name, state))


async def healthz(request: web.BaseRequest, state: GatewayState | None = None) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.BaseRequest, state: GatewayState) -> web.Response:
    problems = await state.readiness_problems()
    if problems:
        return json_response({"status": "not ready", "problems": problems}, status=503)
    return json_response({"status": "ready", "config_version": state.runtime.version})
