"""Audit of admin changes: a middleware records every authenticated admin write with who, what, before and after.

*Who*: the authenticated principal's name (``actor``), with its role and how
it signed on (token or oidc) and the client address in ``detail``; an
``X-Admin-Actor`` header the operator's tooling sends is kept beside them as
``on_behalf_of`` (informative only). A write refused by the role check is
recorded too, with its 403. *What*: method, route and status. *Before / after*: the tenant or
key as the identity directory holds it, around the change; for a create, the
response with every secret-bearing field removed (a new key's plaintext is
shown once to its creator, never kept in the audit log).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tollgate.admin.app_keys import STATE
from tollgate.admin.operations import AdminHandler
from tollgate.admin.roles import principal_of
from tollgate.edge.answers import status_for
from tollgate.errors import GatewayError

__all__ = ["audit_admin_changes", "scrub"]

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_SECRET_FIELDS = frozenset(
    {"key", "api_key", "key_hash", "sha256", "hmac_sha256", "secret", "token", "password", "plaintext"}
)


def scrub(value: Any) -> Any:
    """``value`` without any field that could carry a credential."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in _SECRET_FIELDS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def _snapshot(state: Any, request: web.Request) -> tuple[str | None, str | None, Any]:
    """(tenant, target, current view) of the subject of an admin route, from the identity directory."""
    directory = getattr(getattr(state, "registry", None), "directory", None)
    info = request.match_info
    if "tenant" in info:
        tenant = info["tenant"]
        entry = getattr(directory, "tenants", {}).get(tenant)
        return tenant, f"tenant:{tenant}", scrub(entry.tenant.to_json()) if entry is not None else None
    if "key" in info:
        entry = getattr(directory, "key_ids", {}).get(info["key"])
        if entry is None:
            return None, f"key:{info['key']}", None
        return entry.key.tenant, f"key:{info['key']}", scrub(entry.key.to_json())
    return None, request.path, None


@web.middleware
async def audit_admin_changes(request: web.Request, handler: AdminHandler) -> web.StreamResponse:
    if request.method in _READS:
        return await handler(request)
    state = request.app[STATE]
    tenant, target, before = _snapshot(state, request)
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except GatewayError as exc:  # the outer middleware turns it into its status
        status = status_for(exc)
        raise
    finally:
        _tenant, _target, after = _snapshot(state, request)
        if after is None and before is None and isinstance(response, web.Response) and response.body:
            try:
                after = scrub(orjson.loads(response.body))  # type: ignore[arg-type]
            except (orjson.JSONDecodeError, TypeError):
                after = None
        principal = principal_of(request)
        on_behalf_of = request.headers.get("x-admin-actor")
        state.accounting.audit.record(
            "admin_change",
            actor=principal.name if principal is not None else None,
            tenant=tenant or _tenant,
            target=target,
            before=before,
            after=after,
            detail={
                "method": request.method,
                "route": request.match_info.route.resource.canonical
                if request.match_info.route.resource
                else request.path,
                "status": status,
                "client_ip": request.remote,
                "role": principal.role if principal is not None else None,
                "via": principal.via if principal is not None else None,
                **({"on_behalf_of": on_behalf_of[:128]} if on_behalf_of else {}),
            },
        )
