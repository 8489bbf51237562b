"""Every route of the admin application in one table, and the process's routes it serves: health, reload, OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import web

from tollgate.admin.app_keys import STATE
from tollgate.admin.cache_routes import CACHE_ROUTES
from tollgate.admin.config_center_routes import CONFIG_CENTER_ROUTES
from tollgate.admin.database_routes import DATABASE_ROUTES
from tollgate.admin.openapi import openapi_document, served_routes
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation
from tollgate.admin.principal_routes import PRINCIPAL_ROUTES
from tollgate.admin.resilience_routes import RESILIENCE_ROUTES
from tollgate.admin.responses import as_aiohttp, json_response
from tollgate.admin.rules_routes import RULE_ROUTES
from tollgate.admin.scaling_routes import SCALING_ROUTES
from tollgate.admin.spend_routes import SPEND_ROUTES
from tollgate.admin.tenant_routes import TENANT_ROUTES
from tollgate.admin.usage_routes import USAGE_ROUTES
from tollgate.admin.views import Health, OpenApi, Readiness, Reloaded, ReloadRefused
from tollgate.edge.answers import Response
from tollgate.runtime.state import GatewayState

__all__ = ["OPEN_PATHS", "PROBES", "RELOAD", "ROUTES", "Probe", "Probes", "ReloadAction"]

Probe = Callable[..., Awaitable[Response]]
"""A health probe of the process, answered alike on both listeners; called with the request and the state.

(The public listener's probes take its own request type and use only the state.)"""


class Probes(NamedTuple):
    """The process's liveness and readiness answers."""

    healthz: Probe
    readyz: Probe


ReloadAction = Callable[[GatewayState], Awaitable[tuple[int, dict[str, object]]]]
"""What ``POST /admin/reload`` does: the HTTP status and the JSON body of the answer."""

PROBES = web.AppKey("probes", Probes)
RELOAD: web.AppKey[ReloadAction] = web.AppKey("reload")


@operation("liveness", tag="process", answers={200: DocumentedAnswer("alive", Health)}, open=True)
async def healthz(request: web.Request) -> web.Response:
    return as_aiohttp(await request.app[PROBES].healthz(request, request.app[STATE]))


@operation(
    "readiness: the config is loaded and an upstream is usable; stores that do not answer are named as degraded",
    tag="process",
    answers={
        200: DocumentedAnswer("ready, or serving degraded with the stores that do not answer named", Readiness),
        503: DocumentedAnswer("not ready, with the problems", Readiness),
    },
    open=True,
)
async def readyz(request: web.Request) -> web.Response:
    return as_aiohttp(await request.app[PROBES].readyz(request, request.app[STATE]))


@operation("this document", tag="process", answers={200: DocumentedAnswer("OpenAPI 3.1", OpenApi)}, open=True)
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(served_routes(request.app.router)))


@operation(
    "reload the config file; a refused file changes nothing (with workers: every worker, or none)",
    tag="process",
    answers={
        200: DocumentedAnswer("reloaded", Reloaded),
        422: DocumentedAnswer("refused, with the problems", ReloadRefused),
    },
    role="operator",
)
async def reload(request: web.Request) -> web.Response:
    # Registered on the admin app, so its middlewares authenticate the caller and check its role.
    status, body = await request.app[RELOAD](request.app[STATE])
    return json_response(body, status=status)


OPEN_PATHS = frozenset({"/healthz", "/readyz", "/admin/openapi.json"})
"""Served without a credential."""

ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/admin/openapi.json", openapi),
    *TENANT_ROUTES,
    *RULE_ROUTES,
    *RESILIENCE_ROUTES,
    *USAGE_ROUTES,
    *SPEND_ROUTES,
    *DATABASE_ROUTES,
    *SCALING_ROUTES,
    *PRINCIPAL_ROUTES,
    *CONFIG_CENTER_ROUTES,
    *CACHE_ROUTES,
    ("POST", "/admin/reload", reload),
)
"""Every admin route, in the order the application registers them."""
