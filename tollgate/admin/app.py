"""The admin application: who calls (tokens, OIDC), JSON errors, the audit of writes, the roles, and the routes.

Middlewares, outermost first: errors and authentication (401), the audit of
every write, then the role check (403): a write a role may not make is
audited as refused.
"""

from __future__ import annotations

import logging

from aiohttp import web

from tollgate.admin.app_keys import STATE
from tollgate.admin.audit import audit_admin_changes
from tollgate.admin.operations import AdminHandler, operation_of
from tollgate.admin.principals import CREDENTIALS, credentials_of
from tollgate.admin.responses import error_response, internal_error_response
from tollgate.admin.roles import PRINCIPAL, authorize, principal_of
from tollgate.admin.routes import OPEN_PATHS, PROBES, RELOAD, ROUTES, Probes, ReloadAction
from tollgate.edge.answers import request_id_from
from tollgate.errors import GatewayError, MethodNotAllowed, NotFound
from tollgate.runtime.state import GatewayState

__all__ = ["make_admin_app"]

log = logging.getLogger("tollgate.admin")

# A bulk create of 10,000 tenants fits; anything bigger is refused by aiohttp with 413.
_MAX_BODY = 32 * 1024 * 1024


@web.middleware
async def _errors_and_auth(request: web.Request, handler: AdminHandler) -> web.StreamResponse:
    request_id = request_id_from(request.headers.get("x-request-id"))
    try:
        if request.path not in OPEN_PATHS:
            credentials = credentials_of(request.app)
            request[PRINCIPAL] = await credentials.principal(request.headers.get("authorization"))
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


@web.middleware
async def _roles(request: web.Request, handler: AdminHandler) -> web.StreamResponse:
    principal = principal_of(request)
    if principal is not None and request.match_info.http_exception is None:  # unknown paths answer 404 / 405
        authorize(principal, operation_of(request.match_info.handler), request)
    return await handler(request)


def make_admin_app(state: GatewayState, *, probes: Probes, reload: ReloadAction) -> web.Application:
    """The operator-facing application, served on its own listener (never mounted on the public one).

    ``probes`` answer ``/healthz`` and ``/readyz`` as on the public listener; ``reload`` is what
    ``POST /admin/reload`` does. Both are the process's, which runs this application.
    """
    app = web.Application(middlewares=[_errors_and_auth, audit_admin_changes, _roles], client_max_size=_MAX_BODY)
    app[STATE] = state
    app[CREDENTIALS] = []
    app[PROBES] = probes
    app[RELOAD] = reload
    for method, path, handler in ROUTES:
        if method == "GET":
            app.router.add_get(path, handler)
        else:
            app.router.add_route(method, path, handler)
    return app
