"""Roles of the admin API: whether a principal may call a route, from the role the route declares (``@operation``).

``viewer`` reads (every GET), ``operator`` also changes tenants, keys,
namespaces and rules and reloads, ``admin`` may do everything (principals
included). A ``tenant_admin`` is scoped to its tenants: it may use only the
routes that declare how (``tenant_admin=`` on the operation: the tenant in
the path, the owner of the key in the path, the ``tenant`` query parameter,
or a list filtered to its tenants) and only for its tenants; anywhere else
it gets 403.
"""

from __future__ import annotations

from aiohttp import web

from tollgate.admin.app_keys import STATE
from tollgate.admin.operations import ROLE_RANK, Operation, RouteRole
from tollgate.config.admin import AdminPrincipal
from tollgate.errors import Forbidden

__all__ = ["PRINCIPAL", "authorize", "principal_of", "tenant_scope"]

PRINCIPAL = web.RequestKey("admin_principal", AdminPrincipal)
"""The request's key of the authenticated :class:`AdminPrincipal` (absent on the open routes)."""

_UNDECLARED_ROLE: RouteRole = "admin"  # a route that declares no role is served to admins only


def _refuse(principal: AdminPrincipal, request: web.Request, why: str) -> Forbidden:
    return Forbidden(
        f"{principal.name} ({principal.role}) may not {request.method} {request.path}: {why}", code="admin_forbidden"
    )


def authorize(principal: AdminPrincipal, op: Operation | None, request: web.Request) -> None:
    """Return when ``principal`` may call the route declared by ``op`` as ``request`` does; else :class:`Forbidden`.

    A route without a declaration is served to admins only."""
    if op is None:
        op = Operation("", "", {}, role=_UNDECLARED_ROLE)
    if op.open:
        return
    if principal.role == "tenant_admin":
        _authorize_tenant_admin(principal, op, request)
        return
    needed = op.role or _UNDECLARED_ROLE
    if ROLE_RANK.get(principal.role, -1) < ROLE_RANK[needed]:
        raise _refuse(principal, request, f"it needs the role {needed}")


def _authorize_tenant_admin(principal: AdminPrincipal, op: Operation, request: web.Request) -> None:
    tenants = principal.tenants or frozenset()
    scope = op.tenant_admin
    if scope is None or op.role is None or op.role == "admin":
        raise _refuse(principal, request, "a tenant_admin may use only the routes of its tenants")
    if scope in ("list", "self"):
        return
    if scope == "path":
        tenant = request.match_info.get("tenant")
    elif scope == "key":
        directory = request.app[STATE].registry.directory
        entry = directory.key_ids.get(request.match_info.get("key", ""))
        tenant = entry.key.tenant if entry is not None else None
    else:
        tenant = request.query.get("tenant")
        if tenant is None:
            raise _refuse(principal, request, "give tenant= one of its tenants")
    if tenant is None or tenant not in tenants:
        raise _refuse(principal, request, "not one of its tenants")


def tenant_scope(request: web.Request) -> frozenset[str] | None:
    """The tenants the caller may see in a list: a tenant_admin's; None for every other role (all of them)."""
    principal = principal_of(request)
    if principal is not None and principal.role == "tenant_admin":
        return principal.tenants or frozenset()
    return None


def principal_of(request: web.Request) -> AdminPrincipal | None:
    """The authenticated caller of ``request``."""
    return request.get(PRINCIPAL)
