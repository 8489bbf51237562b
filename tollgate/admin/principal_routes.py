"""Admin routes about the admin API's own principals: who the caller is, and (admins only) who may call."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field

from tollgate.admin.models import View
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation
from tollgate.admin.principals import credentials_of
from tollgate.admin.responses import json_response
from tollgate.admin.roles import principal_of
from tollgate.admin.views import Listing
from tollgate.config.admin import AdminPrincipal
from tollgate.errors import Unauthenticated

__all__ = ["PRINCIPAL_ROUTES"]


class PrincipalView(View):
    """An admin principal (never its token)."""

    name: str
    role: Literal["viewer", "operator", "admin", "tenant_admin"]
    tenants: list[str] | None = Field(description="a tenant_admin's tenants; null for the other roles")
    via: Literal["token", "oidc"]


class OidcView(View):
    issuer: str
    audience: list[str]
    jwks_url: str
    algorithms: list[str]
    key_ids: list[str] = Field(description="the key ids fetched from jwks_url so far")


class PrincipalList(Listing[PrincipalView]):
    """The principals with a token, and the OIDC sign-on (null: none)."""

    oidc: OidcView | None


def _view(p: AdminPrincipal) -> dict[str, object]:
    return {
        "name": p.name,
        "role": p.role,
        "tenants": sorted(p.tenants) if p.tenants is not None else None,
        "via": p.via,
    }


@operation(
    "who the caller is: its name, role and (a tenant_admin) tenants",
    tag="principals",
    answers={200: DocumentedAnswer("the caller", PrincipalView)},
    role="viewer",
    tenant_admin="self",
)
async def whoami(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if principal is None:  # the middleware authenticated it; kept for the type checker
        raise Unauthenticated("send an admin credential", code="invalid_admin_token")
    return json_response(_view(principal))


@operation(
    "every principal with a token, and the OIDC sign-on (from the config file; tokens never shown)",
    tag="principals",
    answers={200: DocumentedAnswer("the principals", PrincipalList)},
    role="admin",
)
async def list_principals(request: web.Request) -> web.Response:
    credentials = credentials_of(request.app)
    oidc = credentials.access.oidc
    keys = credentials.oidc_keys
    return json_response(
        {
            "object": "list",
            "data": [_view(p) for p in credentials.access.principals],
            "oidc": {
                "issuer": oidc.issuer,
                "audience": list(oidc.audience),
                "jwks_url": oidc.jwks.url,
                "algorithms": list(oidc.algorithms),
                "key_ids": sorted(keys.by_kid) if keys is not None else [],
            }
            if oidc is not None
            else None,
        }
    )


PRINCIPAL_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/admin/whoami", whoami),
    ("GET", "/admin/principals", list_principals),
)
