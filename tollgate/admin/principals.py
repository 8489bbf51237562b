"""Who calls the admin API: a bearer token compared in constant time with every principal's hash, or a JWT of the
operator's OpenID Connect provider checked against its JWKS (issuer, audience and algorithms pinned)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import jwt
from aiohttp import web

from tollgate.admin.app_keys import STATE
from tollgate.config.admin import ADMIN_ROLES, AdminAccess, AdminOidc, AdminPrincipal
from tollgate.config.identity import JwtKey
from tollgate.errors import Forbidden, Unauthenticated
from tollgate.identity.jwks import Fetch, JwksKeys, fetch_json
from tollgate.identity.jwt import claim_at, looks_like_jwt

__all__ = ["CREDENTIALS", "AdminCredentials", "credentials_of"]

_DUMMY = bytes(32)
_STRENGTH = ("admin", "operator", "viewer", "tenant_admin")  # several roles in a token: the first of these wins


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split() if " " in value else [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class AdminCredentials:
    """The principals of one config version, and the OIDC provider's keys (kept across reloads that keep them)."""

    __slots__ = ("access", "oidc_keys", "clock")

    def __init__(
        self,
        access: AdminAccess,
        *,
        clock: Callable[[], float],
        fetch: Fetch = fetch_json,
        keys: JwksKeys | None = None,
    ) -> None:
        self.access = access
        self.clock = clock
        oidc = access.oidc
        if oidc is None:
            self.oidc_keys = None
        elif keys is not None and keys.source == oidc.jwks and keys.algorithms == frozenset(oidc.algorithms):
            self.oidc_keys = keys
        else:
            self.oidc_keys = JwksKeys(oidc.jwks, algorithms=oidc.algorithms, clock=clock, fetch=fetch)

    def configured(self) -> bool:
        return bool(self.access.principals) or self.access.oidc is not None

    async def principal(self, authorization: str | None) -> AdminPrincipal:
        """The caller named by an ``Authorization: Bearer`` header; :class:`Unauthenticated` (401) otherwise."""
        if not self.configured():
            raise Unauthenticated(
                "the admin API has no principal configured: set listeners.admin.token (e.g. ${TOLLGATE_ADMIN_TOKEN}), "
                "admin.principals or admin.oidc in the config file",
                code="admin_token_not_configured",
            )
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "send an admin credential as Authorization: Bearer <token>", code="invalid_admin_token"
            )
        oidc = self.access.oidc
        if oidc is not None and self.oidc_keys is not None and looks_like_jwt(token):
            return await self._signed_on(token, oidc, self.oidc_keys)
        return self._by_token(token)

    def _by_token(self, token: str) -> AdminPrincipal:
        """Compared with every principal's hash, whichever matches: the time taken does not say which, or whether."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: AdminPrincipal | None = None
        for p in self.access.principals:
            if hmac.compare_digest(presented, p.token_sha256 or _DUMMY) and p.token_sha256 is not None:
                found = p
        if found is None:
            raise Unauthenticated("the admin token is not valid", code="invalid_admin_token")
        return found

    async def _key(self, token: str, oidc: AdminOidc, keys: JwksKeys) -> JwtKey:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a well-formed JWT", code="invalid_admin_token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in oidc.algorithms:
            raise Unauthenticated(
                f"the token's signing algorithm is not allowed (allowed: {', '.join(oidc.algorithms)})",
                code="invalid_admin_token",
            )
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's key id (kid) is not a string", code="invalid_admin_token")
        if keys.stale():
            await keys.refresh()
        found = keys.keys_for(kid, alg)
        if not found and kid is not None and await keys.refresh():
            found = keys.keys_for(kid, alg)
        if not found:
            raise Unauthenticated(
                "the token names a signing key (kid) the identity provider does not publish", code="invalid_admin_token"
            )
        return found[0]

    async def _signed_on(self, token: str, oidc: AdminOidc, keys: JwksKeys) -> AdminPrincipal:
        key = await self._key(token, oidc, keys)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=list(oidc.audience),
                issuer=oidc.issuer,
                leeway=oidc.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", code="invalid_admin_token") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                "the token's audience (aud) is not this gateway", code="invalid_admin_token"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token's issuer (iss) is not trusted", code="invalid_admin_token") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf)", code="invalid_admin_token") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token lacks the {exc.claim!r} claim", code="invalid_admin_token") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token's signature does not verify", code="invalid_admin_token") from None
        name = claim_at(claims, oidc.name_claim)
        if not isinstance(name, str) or not name:
            raise Unauthenticated(
                f"the token has no {oidc.name_claim!r} claim naming the caller", code="invalid_admin_token"
            )
        granted = {
            oidc.roles_map.get(r, r if r in ADMIN_ROLES else "") for r in _strings(claim_at(claims, oidc.role_claim))
        }
        role = next((r for r in _STRENGTH if r in granted), None)
        if role is None:
            raise Forbidden(
                f"{name} signed on, but the token's {oidc.role_claim!r} claim grants no role of the admin API",
                code="no_admin_role",
            )
        tenants: frozenset[str] | None = None
        if role == "tenant_admin":
            tenants = frozenset(_strings(claim_at(claims, oidc.tenants_claim)))
            if not tenants:
                raise Forbidden(
                    f"{name} is a tenant_admin, but the token's {oidc.tenants_claim!r} claim names no tenant",
                    code="no_admin_role",
                )
        return AdminPrincipal(name=name[:128], role=role, tenants=tenants, via="oidc")


CREDENTIALS: web.AppKey[list[AdminCredentials]] = web.AppKey("admin_credentials")
"""The credentials of the config version in force, in a one-item list the middleware replaces after a reload."""


def credentials_of(app: web.Application) -> AdminCredentials:
    """The credentials of the config version in force (rebuilt when a reload changed ``admin:``)."""
    state = app[STATE]
    holder = app[CREDENTIALS]
    current = holder[0] if holder else None
    access = state.config.admin
    if current is None or current.access is not access:  # a reload built a new config
        clock = state.clock.monotonic
        holder[:] = [AdminCredentials(access, clock=clock, keys=current.oidc_keys if current is not None else None)]
    return holder[0]
