"""The admin application: bearer-token check in constant time, JSON errors, the audit of writes, and the routes."""

from __future__ import annotations

import hashlib
import hmac
import logging

from aiohttp import web

from tollgate.admin.audit import audit_admin_changes
from tollgate.admin.operations import AdminHandler
from tollgate.admin.routes import OPEN_PATHS, PROBES, RELOAD, ROUTES, Probes, ReloadAction
from tollgate.edge.answers import error_response, internal_error_response, request_id_from
from tollgate.errors import GatewayError, MethodNotAllowed, NotFound, Unauthenticated
from tollgate.runtime.state import STATE, GatewayState

__all__ = ["make_admin_app"]

log = logging.getLogger("tollgate.admin")

# A bulk create of 10,000 tenants fits; anything bigger is refused by aiohttp with 413.
_MAX_BODY = 32 * 1024 * 1024


def _check_token(request: web.Request) -> None:
    expected = request.app[STATE].config.listeners.admin.token_sha256
    if expected is None:
        raise Unauthenticated(
            "the admin API has no token configured: set listeners.admin.token (e.g. ${TOLLGATE_ADMIN_TOKEN}) "
            "or listeners.admin.token_sha256 in the config file",
            code="admin_token_not_configured",
        )
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    presented = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    if not hmac.compare_digest(presented, bytes.fromhex(expected)) or scheme.lower() != "bearer":
        raise Unauthenticated("send the admin token as Authorization: Bearer <token>", code="invalid_admin_token")


@web.middleware
async def _errors_and_auth(request: web.Request, handler: AdminHandler) -> web.StreamResponse:
    request_id = request_id_from(request.headers.get("x-request-id"))
    try:
        if request.path not in OPEN_PATHS:
            _check_token(request)
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status == 405:
            return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}"), request_id)
        if exc.status == 404:
            return error_response(NotFound(f"unknown admin path {request.path}", code="unknown_url"), request_id)
        raise
    except Exception:
        log.exception("admin request %s %s failed", request.method, request.path)
        return internal_error_response(request_id)


def make_admin_app(state: GatewayState, *, probes: Probes, reload: ReloadAction) -> web.Application:
    """The operator-facing application, served on its own listener (never mounted on the public one).

    ``probes`` answer ``/healthz`` and ``/readyz`` as on the public listener; ``reload`` is what
    ``POST /admin/reload`` does. Both are the process's, which runs this application.
    """
    app = web.Application(middlewares=[_errors_and_auth, audit_admin_changes], client_max_size=_MAX_BODY)
    app[STATE] = state
    app[PROBES] = probes
    app[RELOAD] = reload
    for method, path, handler in ROUTES:
        if method == "GET":
            app.router.add_get(path, handler)
        else:
            app.router.add_route(method, path, handler)
    return app
