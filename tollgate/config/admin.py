"""Who may use the admin API: principals with hashed tokens, and sign-on through the operator's OpenID Connect provider.

The ``admin:`` section of the config file::

    admin:
      principals:
        - {name: ops-bot, role: operator, token: "${OPS_BOT_TOKEN}"}
        - {name: acme-admin, role: tenant_admin, token_sha256: "<64 hex>", tenants: [acme]}
      oidc:
        issuer: https://login.example.com/
        audience: tollgate-admin
        jwks_url: https://login.example.com/.well-known/jwks.json
        role_claim: groups
        roles_map: {gateway-admins: admin, gateway-ops: operator}

A token is kept only as its SHA-256. ``listeners.admin.token`` stays the
principal ``admin`` with the role ``admin``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal, get_args

from pydantic import Strict

from tollgate.config.identity import HEX64, JwksSource, TenantId
from tollgate.config.jwtkeys import HttpUrl, jwks_source
from tollgate.config.validation import Doc, Found, check
from tollgate.config.values import Duration, DurationOrZero, NonEmptyStr, Str, StrList, frozen_map, matching

__all__ = [
    "ADMIN_ROLES",
    "AdminAccess",
    "AdminDoc",
    "AdminOidc",
    "AdminPrincipal",
    "AdminRole",
    "OidcDoc",
    "PrincipalDoc",
    "build_admin",
]

AdminRole = Literal["viewer", "operator", "admin", "tenant_admin"]
ADMIN_ROLES: tuple[str, ...] = get_args(AdminRole)
_PRINCIPAL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}"
_ASYMMETRIC = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_MIN_TOKEN = 16


# -- what the gateway reads --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """Someone the admin API knows: by a token (kept as its SHA-256), or signed on through OIDC (``via="oidc"``).

    ``tenants`` is the scope of a ``tenant_admin``; None for the other roles."""

    name: str
    role: str
    token_sha256: bytes | None = field(default=None, repr=False)
    tenants: frozenset[str] | None = None
    via: Literal["token", "oidc"] = "token"


@dataclass(frozen=True, slots=True)
class AdminOidc:
    """How a JWT from the operator's identity provider becomes an admin principal."""

    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks: JwksSource
    role_claim: str = "roles"
    tenants_claim: str = "tenants"
    name_claim: str = "sub"
    roles_map: Mapping[str, str] = field(default_factory=frozen_map)
    leeway: float = 30.0


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """Every principal with a token, and the OIDC sign-on (None: tokens only)."""

    principals: tuple[AdminPrincipal, ...] = ()
    oidc: AdminOidc | None = None


# -- what the file writes ---------------------------------------------------------


class PrincipalDoc(Doc):
    """One admin principal with a bearer token: its name (in the audit log), its role, its token."""

    name: Annotated[str, Strict(), matching(_PRINCIPAL_NAME)]
    role: AdminRole
    token: Str | None = None
    """At least 16 characters, usually ${ENV_VAR}; only its SHA-256 is kept in memory."""
    token_sha256: Annotated[str, Strict(), matching(HEX64.pattern)] | None = None
    """Instead of token: its SHA-256, 64 hex characters."""
    tenants: tuple[TenantId, ...] | None = None
    """The tenants a tenant_admin manages (required for it, refused for the other roles)."""

    @check
    def one_token(self) -> Found:
        if (self.token is None) == (self.token_sha256 is None):
            yield "token", "give exactly one of token or token_sha256"
        if self.token is not None and len(self.token) < _MIN_TOKEN:
            yield "token", f"must be at least {_MIN_TOKEN} characters"

    @check
    def tenants_only_for_tenant_admin(self) -> Found:
        if self.role == "tenant_admin" and not self.tenants:
            yield "tenants", "is required for the role tenant_admin: the tenants it manages"
        if self.role != "tenant_admin" and self.tenants is not None:
            yield "tenants", f"only a tenant_admin is scoped to tenants; the role {self.role} is not"

    def digest(self) -> bytes:
        if self.token is not None:
            return hashlib.sha256(self.token.encode("utf-8", "surrogateescape")).digest()
        assert self.token_sha256 is not None
        return bytes.fromhex(self.token_sha256)


class OidcDoc(Doc):
    """Sign-on with JWTs of the operator's OpenID Connect provider, checked against its JWKS."""

    issuer: NonEmptyStr
    """The iss every token must carry, exactly."""
    audience: StrList
    """The aud a token must carry (one of them): the client id the provider issues tokens for."""
    jwks_url: HttpUrl
    """The provider's JWKS: fetched, cached, refetched on an unknown key id (at most once per refetch_interval)."""
    algorithms: tuple[_ASYMMETRIC, ...] = ("RS256",)
    """Allowed signing algorithms (asymmetric only: never none, never HMAC)."""
    role_claim: NonEmptyStr = "roles"
    """The claim (dotted path allowed: realm_access.roles) with the role names: a string or a list."""
    tenants_claim: NonEmptyStr = "tenants"
    """The claim listing a tenant_admin's tenants."""
    name_claim: NonEmptyStr = "sub"
    """The claim naming the principal in the audit log (email, preferred_username...)."""
    roles_map: Mapping[Str, AdminRole] = {}
    """The provider's role or group names → roles of the gateway; a name not mapped counts as the role of the same
    name when there is one. Several roles: the strongest wins (admin, operator, viewer, then tenant_admin)."""
    leeway: DurationOrZero = 30.0
    """Clock skew allowed on exp and nbf, at most 2m."""
    jwks_max_age: Duration = 600.0
    jwks_refetch_interval: Duration = 30.0

    @check
    def leeway_is_small(self) -> Found:
        if self.leeway > 120:
            yield "leeway", "must be at most 2m"
        if not self.algorithms:
            yield "algorithms", "at least one algorithm is required"


class AdminDoc(Doc):
    """Who may use the admin API, beside listeners.admin.token (the principal admin)."""

    principals: tuple[PrincipalDoc, ...] = ()
    oidc: OidcDoc | None = None

    @check
    def distinct_names_and_tokens(self) -> Found:
        names: dict[str, int] = {}
        digests: dict[bytes, int] = {}
        for i, p in enumerate(self.principals):
            if p.name in names:
                yield f"principals[{i}].name", f"{p.name!r} is already the name of principals[{names[p.name]}]"
            names.setdefault(p.name, i)
            if p.token is None and p.token_sha256 is None:
                continue
            digest = p.digest()
            if digest in digests:
                yield f"principals[{i}].token", f"the same token as principals[{digests[digest]}]"
            digests.setdefault(digest, i)


def build_admin(doc: AdminDoc, listener_token_sha256: str | None) -> AdminAccess:
    principals = [
        AdminPrincipal(
            name=p.name,
            role=p.role,
            token_sha256=p.digest(),
            tenants=frozenset(p.tenants) if p.tenants is not None else None,
        )
        for p in doc.principals
    ]
    if listener_token_sha256 is not None:
        principals.insert(0, AdminPrincipal("admin", "admin", bytes.fromhex(listener_token_sha256)))
    oidc = doc.oidc
    return AdminAccess(
        principals=tuple(principals),
        oidc=AdminOidc(
            issuer=oidc.issuer,
            audience=oidc.audience,
            algorithms=tuple(oidc.algorithms),
            jwks=jwks_source(oidc.jwks_url, oidc.jwks_max_age, oidc.jwks_refetch_interval),
            role_claim=oidc.role_claim,
            tenants_claim=oidc.tenants_claim,
            name_claim=oidc.name_claim,
            roles_map=frozen_map(dict(oidc.roles_map)),
            leeway=oidc.leeway,
        )
        if oidc is not None
        else None,
    )
