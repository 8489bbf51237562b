"""The public and admin aiohttp applications: routes only; the work happens in the pipeline stages."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .context import ENDPOINTS
from .errors import GatewayError, MethodNotAllowed, NotFound
from .http import error_response, json_response, request_id_from
from .identity import Principal, authenticate, registry_watcher_ctx
from .proxy import make_proxy_handler
from .runtime import STATE, GatewayState

__all__ = ["make_public_app", "healthz", "readyz"]

# Bodies are size-checked by the guard stage against the live config; aiohttp's own cap stays out of the way.
_NO_AIOHTTP_BODY_CAP = 1 << 40


def make_public_app(state: GatewayState) -> web.Application:
    """The client-facing application. Its cleanup context opens and closes the gateway's resources."""
    app = web.Application(client_max_size=_NO_AIOHTTP_BODY_CAP)
    app[STATE] = state
    app.cleanup_ctx.append(_state_ctx)
    app.cleanup_ctx.append(registry_watcher_ctx)
    for path, endpoint in ENDPOINTS.items():
        app.router.add_post(path, make_proxy_handler(endpoint))
        app.router.add_route("*", path, _method_not_allowed(("POST",)))
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model:.+}", _get_model)
    app.router.add_route("*", "/v1/models", _method_not_allowed(("GET",)))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def _state_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.start()
    yield
    await state.close()


def _method_not_allowed(allowed: tuple[str, ...]):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        exc = MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}", allowed=allowed)
        return error_response(exc, request_id_from(request.headers.get("x-request-id")))

    return handler


async def _not_found(request: web.Request) -> web.Response:
    exc = NotFound(f"unknown path {request.path}", code="unknown_url")
    return error_response(exc, request_id_from(request.headers.get("x-request-id")))


def _model_entry(name: str, state: GatewayState) -> dict[str, object]:
    model = state.config.models[name]
    return {"id": name, "object": "model", "created": model.created, "owned_by": model.owned_by}


def _principal(request: web.Request, state: GatewayState) -> Principal:
    return authenticate(request, state.runtime.identity, state.registry.directory)


async def _list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        principal = _principal(request, state)
    except GatewayError as exc:
        return error_response(exc, request_id_from(request.headers.get("x-request-id")))
    data = [_model_entry(name, state) for name in state.config.models if principal.may_use(name)]
    return json_response({"object": "list", "data": data})


async def _get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["model"]
    try:
        principal = _principal(request, state)
    except GatewayError as exc:
        return error_response(exc, request_id_from(request.headers.get("x-request-id")))
    if name not in state.config.models or not principal.may_use(name):
        exc = NotFound(f"the model {name!r} does not exist or you do not have access to it", param="model", code="model_not_found")
        return error_response(exc, request_id_from(request.headers.get("x-request-id")))
    return json_response(_model_entry(name, state))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    problems = await state.readiness_problems()
    if problems:
        return json_response({"status": "not ready", "problems": problems}, status=503)
    return json_response({"status": "ready", "config_version": state.runtime.version})
