"""Identity records: plans, tenants and their API keys (as the file and the admin API write them, and as read).

The ``...Doc`` models are what a config file declares under ``plans:`` and
``tenants:`` and what the admin API accepts; the frozen dataclasses are what
the gateway reads. A tenant or an API key created through the admin API is
the same :class:`Tenant` / :class:`ApiKey` as one declared in the file,
validated by the same models. The ``identity:`` and ``registry:`` sections
are in :mod:`tollgate.config.chain`, JWT keys in :mod:`tollgate.config.jwtkeys`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, Strict

from tollgate.config.reader import Node
from tollgate.config.validation import Doc, Found, Problems, check, join, validate
from tollgate.config.values import (
    Bool,
    Metadata,
    NonEmptyStr,
    Str,
    StrList,
    Timestamp,
    frozen_map,
    matching,
    parse_timestamp,
)

__all__ = [
    "DEFAULT_PLANS",
    "IDENTIFIERS",
    "KEY_ID",
    "LIMIT_FIELDS",
    "SUBDOMAIN",
    "TENANT_ID",
    "ApiKey",
    "EndUserConfig",
    "IdentityConfig",
    "JwksSource",
    "JwtConfig",
    "JwtKey",
    "KeyDoc",
    "Limits",
    "LimitsDoc",
    "Plan",
    "PlanDoc",
    "RegistryConfig",
    "Tenant",
    "TenantDoc",
    "TenantFields",
    "build_key",
    "build_plan",
    "build_tenant",
    "check_tenant_refs",
    "frozen_map",
    "hash_key",
    "key_secret_problems",
    "parse_key",
    "parse_tenant",
    "parse_timestamp",
    "split_key_hash",
    "tenant_ref_problems",
]

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
PLAN_NAME = TENANT_ID
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
HEX64 = re.compile(r"[0-9a-f]{64}")
IDENTIFIERS = ("api_key", "jwt", "subdomain", "header", "query")
END_USER_SOURCES = ("jwt", "body", "header")
API_KEY_HEADERS = ("authorization", "x-api-key", "api-key")
JwtAlgorithm = Literal[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
JWT_ALGORITHMS: tuple[str, ...] = get_args(JwtAlgorithm)
LIMIT_FIELDS = (
    "monthly_requests",
    "monthly_tokens",
    "concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "priority",
    "max_header_priority",
)
_MAX_LIMIT = 10**15
_NO_VALUES: Mapping[str, Any] = frozen_map()
TenantId = Annotated[str, matching(TENANT_ID.pattern)]
PlanName = Annotated[str, matching(PLAN_NAME.pattern)]
LimitValue = Annotated[int, Strict(), Field(ge=0, le=_MAX_LIMIT)]


# -- what the gateway reads -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """A plan's limits and quotas; ``None`` means the plan sets no such limit."""

    monthly_requests: int | None = None
    monthly_tokens: int | None = None
    concurrency: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    # Priority class of the tenant's requests when the gateway sheds load or queues (higher first; default 0),
    # and the highest class a client may ask for with the X-Tollgate-Priority header (None: the header is ignored).
    priority: int | None = None
    max_header_priority: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {f: getattr(self, f) for f in LIMIT_FIELDS}


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    limits: Limits
    # None: every configured model.
    allowed_models: tuple[str, ...] | None = None
    description: str = ""
    # Replicas a scaling pool dedicated to a tenant of the plan may reach (tollgate/scaling); None: no quota.
    max_instances: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            **self.limits.to_json(),
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
            "max_instances": self.max_instances,
        }


# The tier table. ``plans:`` in the file adds to these or replaces one by name.
DEFAULT_PLANS: Mapping[str, Plan] = frozen_map(
    {
        p.name: p
        for p in (
            Plan("personal", Limits(monthly_requests=10_000, concurrency=3), description="Personal", max_instances=3),
            Plan(
                "small_business",
                Limits(monthly_requests=100_000, concurrency=10),
                description="Small business",
                max_instances=10,
            ),
            Plan(
                "enterprise",
                Limits(monthly_requests=1_000_000, concurrency=50, priority=1),
                description="Enterprise",
                max_instances=50,
            ),
            Plan(
                "government",
                Limits(monthly_requests=5_000_000, concurrency=100, priority=1),
                description="Government",
                max_instances=100,
            ),
            Plan(
                "education", Limits(monthly_requests=500_000, concurrency=20), description="Education", max_instances=20
            ),
        )
    }
)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: never the key itself, only its digest, kept as bytes (the directory indexes keys by
    the same object); ``key_hash`` is its written form, ``sha256:<hex>`` or ``hmac-sha256:<hex>``."""

    id: str
    tenant: str
    digest: bytes = field(repr=False)
    hash_kind: str = "sha256"  # "sha256" | "hmac-sha256"; "" for the placeholder of a key that failed validation
    name: str = ""
    created: float = 0.0
    expires: float | None = None
    revoked: bool = False
    # None: whatever the tenant may use; otherwise only these models (and only those the tenant may use).
    models: tuple[str, ...] | None = None
    # The tenant's admin key: it may also list, create and revoke its own tenant's keys (the self-service routes).
    admin: bool = False

    @property
    def key_hash(self) -> str:
        return f"{self.hash_kind}:{self.digest.hex()}" if self.hash_kind else ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "key_hash": self.key_hash,
            "name": self.name,
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
            "models": list(self.models) if self.models is not None else None,
            "admin": self.admin,
        }


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    plan: str
    status: str = "active"
    subdomain: str | None = None
    # None: the plan's allowed models; otherwise this list replaces the plan's.
    allowed_models: tuple[str, ...] | None = None
    # Per-tenant overrides of the plan's limits (only the fields given).
    limits: Mapping[str, int | None] = field(default_factory=frozen_map)
    metadata: Mapping[str, Any] = field(default_factory=frozen_map)
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "plan": self.plan,
            "status": self.status,
            "subdomain": self.subdomain,
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
            "limits": dict(self.limits),
            "metadata": dict(self.metadata),
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class JwtKey:
    """One verification key, pinned to exactly one algorithm (so HS/RS confusion cannot happen)."""

    kid: str | None
    algorithm: str
    key: Any = field(repr=False)  # a cryptography public key, or the HMAC secret as bytes


@dataclass(frozen=True, slots=True)
class JwksSource:
    """A JWKS URL whose keys are fetched and cached: refetched past ``max_age`` seconds, and when a token names an
    unknown key id, at most once per ``refetch_interval`` seconds; a fetch gives up after ``timeout`` seconds."""

    url: str
    max_age: float = 600.0
    refetch_interval: float = 30.0
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class JwtConfig:
    algorithms: tuple[str, ...]
    keys: tuple[JwtKey, ...]
    audience: tuple[str, ...] | None = None
    issuer: str | None = None
    leeway: float = 30.0
    tenant_claim: str = "tenant"
    user_claim: str = "sub"
    cache_size: int = 10_000
    jwks_file: str | None = None
    jwks: JwksSource | None = None


@dataclass(frozen=True, slots=True)
class EndUserConfig:
    """Where a request's end user comes from: a subdivision of the authenticated tenant, never another tenant.

    The ``user`` scope of rules counts per end user, and usage is broken down
    by it. ``sources`` is in precedence order (the first with a value wins);
    ``jwt`` (the verified token's user claim) comes first when listed.
    """

    sources: tuple[str, ...] = ("jwt",)
    # The request header of the ``header`` source (lower case).
    header: str = "x-tollgate-end-user"
    # Longer values (in characters) are refused with a 400 naming the field.
    max_length: int = 256


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    # False when the file has neither ``identity:`` nor ``tenants:``: every request is the anonymous principal.
    enabled: bool = False
    chain: tuple[str, ...] = ("api_key",)
    key_secret: bytes | None = field(default=None, repr=False)
    key_prefix: str = "tg_"
    api_key_headers: tuple[str, ...] = API_KEY_HEADERS
    jwt: JwtConfig | None = None
    base_domains: tuple[str, ...] = ()
    header: str = "x-tenant-id"
    query: str = "tenant"
    end_user: EndUserConfig = EndUserConfig()


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where runtime changes to tenants and keys persist: ``memory`` (lost on restart), ``file`` or ``redis``."""

    backend: str = "memory"
    path: str | None = None
    url: str | None = None
    prefix: str = "tollgate:registry"
    poll_interval: float = 0.25


def split_key_hash(key_hash: str) -> tuple[str, bytes]:
    """``sha256:<hex>`` -> ``("sha256", digest)``; ``""`` -> ``("", b"")``."""
    kind, _, hexdigest = key_hash.partition(":")
    return kind, bytes.fromhex(hexdigest)


def hash_key(key: str, secret: bytes | None) -> str:
    """The stored form of an API key: HMAC-SHA256 with the server secret when one is set, else SHA-256."""
    data = key.encode("utf-8", "surrogateescape")
    if secret is not None:
        return "hmac-sha256:" + hmac.digest(secret, data, "sha256").hex()
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- what a file or an admin API body writes ----------------------------------------------


class LimitsDoc(Doc):
    """A plan's limits and quotas (in a tenant: overrides of its plan's, only the fields given)."""

    monthly_requests: LimitValue | None = None
    monthly_tokens: LimitValue | None = None
    concurrency: LimitValue | None = None
    """Requests in flight at once."""
    requests_per_minute: LimitValue | None = None
    tokens_per_minute: LimitValue | None = None
    priority: LimitValue | None = None
    """The class of the requests when the gateway sheds load or queues (higher first, default 0)."""
    max_header_priority: LimitValue | None = None
    """How high a client may raise it with the X-Tollgate-Priority header (absent: the header is ignored)."""


def _given(doc: LimitsDoc | PlanDoc) -> dict[str, int | None]:
    """The limits a document sets (a tenant's overrides name only these)."""
    given = doc.model_fields_set
    return {f: getattr(doc, f) for f in LIMIT_FIELDS if f in given} if given else {}


class PlanDoc(Doc):
    """A plan: its limits (monthly_requests and concurrency required) and the models it may use."""

    monthly_requests: LimitValue
    monthly_tokens: LimitValue | None = None
    concurrency: LimitValue
    """Requests in flight at once."""
    requests_per_minute: LimitValue | None = None
    tokens_per_minute: LimitValue | None = None
    priority: LimitValue | None = None
    """The class of the plan's requests when the gateway sheds load or queues (higher first, default 0)."""
    max_header_priority: LimitValue | None = None
    """How high a client may raise it with the X-Tollgate-Priority header (absent: the header is ignored)."""
    allowed_models: StrList | None = None
    """Absent: every model."""
    description: Str | None = None
    max_instances: LimitValue | None = None
    """Replicas a scaling pool dedicated to a tenant of this plan may reach (absent: no quota)."""


class KeyDoc(Doc):
    """An API key, declared by its hash (sha256, hmac_sha256) or in plaintext (key, hashed at load)."""

    id: Annotated[str, Strict(), matching(KEY_ID.pattern)] | None = None
    """Unique; default <tenant>-<index>."""
    key: Str | None = None
    """The key itself (at least 16 characters), hashed at load: from an environment variable, never written."""
    sha256: Annotated[str, Strict(), matching(HEX64.pattern)] | None = None
    """SHA-256 of the key, hex (when identity.key_secret is not set); quote digests in YAML."""
    hmac_sha256: Annotated[str, Strict(), matching(HEX64.pattern)] | None = None
    """HMAC-SHA256(identity.key_secret, key), hex."""
    key_hash: Annotated[str, Strict(), matching(r"(sha256|hmac-sha256):[0-9a-f]{64}")] | None = None
    """The stored form, sha256:<hex> or hmac-sha256:<hex>."""
    name: Str = ""
    created: Annotated[float, Strict(), Field(ge=0)] | None = None
    expires: Timestamp | None = None
    """ISO 8601 time or epoch seconds; refused from then on."""
    revoked: Bool = False
    models: StrList | None = None
    """None: whatever the tenant may use; otherwise only these (and only those the tenant may use)."""
    admin: Bool = False
    """The tenant's admin key: it may also list, create and revoke the tenant's keys on /v1/tollgate/keys."""

    @check
    def one_credential(self) -> Found:
        given = [k for k in ("key", "sha256", "hmac_sha256", "key_hash") if getattr(self, k) is not None]
        if len(given) != 1:
            yield "", "give exactly one of key, sha256, hmac_sha256" + (f" (got {', '.join(given)})" if given else "")
        elif self.key is not None and len(self.key) < 16:
            yield "key", "must be at least 16 characters"

    def key_hash_with(self, secret: bytes | None) -> str:
        if self.key is not None:
            return hash_key(self.key, secret)
        if self.sha256 is not None:
            return "sha256:" + self.sha256
        if self.hmac_sha256 is not None:
            return "hmac-sha256:" + self.hmac_sha256
        return self.key_hash or ""


def key_secret_problems(key: KeyDoc, secret: bytes | None) -> Found:
    """A digest must be of the kind the server secret implies."""
    if key.sha256 is not None and secret is not None:
        yield "sha256", "identity.key_secret is set, so keys are HMAC-SHA256 hashed: give hmac_sha256 or key"
    if key.hmac_sha256 is not None and secret is None:
        yield "hmac_sha256", "needs identity.key_secret; without it give sha256 or key"


class TenantFields(Doc):
    """A tenant's own fields: who it is, its plan and the overrides of the plan."""

    name: NonEmptyStr | None = None
    """Default: the tenant id."""
    plan: NonEmptyStr
    status: Literal["active", "suspended"] = "active"
    """suspended: refused with 403."""
    subdomain: Annotated[str, Strict(), matching(SUBDOMAIN.pattern)] | None = None
    """Unique; acme.llm.example.com -> the tenant whose subdomain is acme."""
    allowed_models: StrList | None = None
    """Replaces the plan's list."""
    limits: LimitsDoc = LimitsDoc()
    """Overrides of any plan limit."""
    metadata: Metadata = Field(default_factory=frozen_map)
    created: Annotated[float, Strict(), Field(ge=0)] | None = None


class TenantDoc(TenantFields):
    """A tenant as a config file declares it under ``tenants:``, with its API keys."""

    keys: tuple[KeyDoc, ...] = ()


def build_tenant(tenant_id: str, doc: TenantFields, *, created: float = 0.0) -> Tenant:
    return Tenant(
        id=tenant_id,
        name=doc.name if doc.name is not None else tenant_id,
        plan=doc.plan or "",
        status=doc.status,
        subdomain=doc.subdomain,
        allowed_models=tuple(dict.fromkeys(doc.allowed_models)) if doc.allowed_models is not None else None,
        limits=frozen_map(_given(doc.limits)) if doc.limits.model_fields_set else _NO_VALUES,
        metadata=doc.metadata if doc.metadata else _NO_VALUES,
        created=doc.created if doc.created is not None else created,
    )


def build_key(doc: KeyDoc, tenant_id: str, *, secret: bytes | None, default_id: str, created: float = 0.0) -> ApiKey:
    kind, digest = split_key_hash(doc.key_hash_with(secret))
    return ApiKey(
        id=doc.id or default_id,
        tenant=tenant_id,
        digest=digest,
        hash_kind=kind,
        name=doc.name,
        created=doc.created if doc.created is not None else created,
        expires=doc.expires,
        revoked=doc.revoked,
        models=tuple(dict.fromkeys(doc.models)) if doc.models is not None else None,
        admin=doc.admin,
    )


def build_plan(name: str, doc: PlanDoc) -> Plan:
    limits = Limits(**_given(doc))
    allowed = tuple(dict.fromkeys(doc.allowed_models)) if doc.allowed_models is not None else None
    return Plan(name, limits, allowed, doc.description if doc.description is not None else name, doc.max_instances)


def check_tenant_refs(
    tenant: Tenant,
    path: str,
    problems: Problems,
    *,
    plans: Mapping[str, Plan],
    models: Mapping[str, Any],
    subdomain_owner: Mapping[str, str],
) -> None:
    """Cross-field checks: the plan exists, every model exists, the subdomain is not another tenant's."""
    found = tenant_ref_problems(tenant.id, tenant, plans=plans, models=models, subdomain_owner=subdomain_owner)
    for where, reason in found:
        problems.add(join(path, where), reason)


def tenant_ref_problems(
    tenant_id: str,
    tenant: Tenant | TenantFields,
    *,
    plans: Mapping[str, Any],
    models: Mapping[str, Any],
    subdomain_owner: Mapping[str, str],
) -> Found:
    """The plan and every model exist; the subdomain is not another tenant's."""
    if tenant.plan and tenant.plan not in plans:
        yield "plan", f"unknown plan {tenant.plan!r} (known: {', '.join(sorted(plans))})"
    for i, m in enumerate(tenant.allowed_models or ()):
        if m not in models:
            yield f"allowed_models[{i}]", f"unknown model {m!r}"
    if tenant.subdomain is not None:
        owner = subdomain_owner.get(tenant.subdomain)
        if owner is not None and owner != tenant_id:
            yield "subdomain", f"{tenant.subdomain!r} is already the subdomain of tenant {owner!r}"


# -- the entry points of the admin API and the registry (a document node in, records out) ----------

_TENANT_KEYS = ("name", "plan", "status", "subdomain", "allowed_models", "limits", "metadata", "created")
_KEY_KEYS = (
    "id",
    "key",
    "sha256",
    "hmac_sha256",
    "key_hash",
    "name",
    "created",
    "expires",
    "revoked",
    "models",
    "admin",
)


def parse_tenant(tenant_id: str, node: Node, *, created: float = 0.0) -> Tenant:
    """One tenant's fields from a document node (not its id or keys); see :func:`check_tenant_refs`."""
    doc = validate(TenantFields, node.take(_TENANT_KEYS), node.path, node.problems)
    if doc is None:
        return Tenant(id=tenant_id, name=tenant_id, plan="", created=created)
    return build_tenant(tenant_id, doc, created=created)


def parse_key(node: Node, tenant_id: str, *, secret: bytes | None, default_id: str, created: float = 0.0) -> ApiKey:
    """A key declared by hash (``sha256:`` / ``hmac_sha256:`` / ``key_hash:``) or by plaintext ``key:``."""
    doc = validate(KeyDoc, node.take(_KEY_KEYS), node.path, node.problems)
    if doc is None:
        return ApiKey(id=default_id, tenant=tenant_id, digest=b"", hash_kind="", created=created)
    for where, reason in key_secret_problems(doc, secret):
        node.problems.add(join(node.path, where), reason)
    return build_key(doc, tenant_id, secret=secret, default_id=default_id, created=created)
