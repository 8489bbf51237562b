"""Config sections of identity: ``identity:`` (the identifier chain), ``plans:``, ``tenants:`` and ``registry:``.

The frozen dataclasses here are shared with the runtime registry: a tenant or
an API key created through the admin API is the same :class:`Tenant` /
:class:`ApiKey` as one declared in the file, parsed by the same functions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tollgate.config.reader import MISSING, Node, Problems

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
    "IdentitySections",
    "JwtConfig",
    "JwtKey",
    "Limits",
    "Plan",
    "RegistryConfig",
    "Tenant",
    "check_tenant_refs",
    "hash_key",
    "parse_identity_sections",
    "parse_key",
    "parse_tenant",
    "parse_timestamp",
]

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
PLAN_NAME = TENANT_ID
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
HEX64 = re.compile(r"[0-9a-f]{64}")
IDENTIFIERS = ("api_key", "jwt", "subdomain", "header", "query")
END_USER_SOURCES = ("jwt", "body", "header")
CREDENTIALS = ("api_key", "jwt")
API_KEY_HEADERS = ("authorization", "x-api-key", "api-key")
JWT_ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
LIMIT_FIELDS = (
    "monthly_requests",
    "monthly_tokens",
    "concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "priority",
    "max_header_priority",
)
TENANT_STATUSES = ("active", "suspended")
REGISTRY_BACKENDS = ("memory", "file", "redis")
_MAX_LIMIT = 10**15


# -- model ------------------------------------------------------------------


def frozen_map(d: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            **self.limits.to_json(),
            "allowed_models": list(self.allowed_models) if self.allowed_models is not None else None,
        }


# The tier table. ``plans:`` in the file adds to these or replaces one by name.
DEFAULT_PLANS: Mapping[str, Plan] = frozen_map(
    {
        p.name: p
        for p in (
            Plan("personal", Limits(monthly_requests=10_000, concurrency=3), description="Personal"),
            Plan("small_business", Limits(monthly_requests=100_000, concurrency=10), description="Small business"),
            Plan(
                "enterprise", Limits(monthly_requests=1_000_000, concurrency=50, priority=1), description="Enterprise"
            ),
            Plan(
                "government", Limits(monthly_requests=5_000_000, concurrency=100, priority=1), description="Government"
            ),
            Plan("education", Limits(monthly_requests=500_000, concurrency=20), description="Education"),
        )
    }
)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: never the key itself, only ``key_hash`` (``sha256:<hex>`` or ``hmac-sha256:<hex>``)."""

    id: str
    tenant: str
    key_hash: str = field(repr=False)
    name: str = ""
    created: float = 0.0
    expires: float | None = None
    revoked: bool = False
    # None: whatever the tenant may use; otherwise only these models (and only those the tenant may use).
    models: tuple[str, ...] | None = None

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


@dataclass(frozen=True, slots=True)
class IdentitySections:
    identity: IdentityConfig
    plans: Mapping[str, Plan]
    tenants: Mapping[str, Tenant]
    api_keys: Mapping[str, ApiKey]
    registry: RegistryConfig


# -- helpers ----------------------------------------------------------------


def hash_key(key: str, secret: bytes | None) -> str:
    """The stored form of an API key: HMAC-SHA256 with the server secret when one is set, else SHA-256."""
    data = key.encode("utf-8", "surrogateescape")
    if secret is not None:
        return "hmac-sha256:" + hmac.digest(secret, data, "sha256").hex()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_timestamp(value: Any) -> float:
    """An ISO 8601 date/time (YAML may hand us a datetime already) or epoch seconds -> epoch seconds."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 time or epoch seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"must be an ISO 8601 time such as 2026-01-31T00:00:00Z (got {value!r})") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    raise ValueError("must be an ISO 8601 time or epoch seconds")


def _model_list(node: Node, key: str) -> tuple[str, ...] | None:
    value = node.str_list(key, None)
    return tuple(dict.fromkeys(value)) if value is not None else None


def _limits(node: Node, *, required: tuple[str, ...] = ()) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in LIMIT_FIELDS:
        if node.has(name) or name in required:
            out[name] = node.int(name, MISSING if name in required else None, min=0, max=_MAX_LIMIT)
    return out


def _timestamp(node: Node, key: str) -> float | None:
    value = node.raw(key, None)
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        node.error(key, str(exc))
        return None


def _metadata(node: Node, key: str) -> dict[str, Any]:
    value = node.raw(key, None)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        node.error(key, "must be a mapping with string keys")
        return {}
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)) and v is not None:
            node.problems.add(f"{node.at(key)}.{k}", "must be a string, number, boolean or null")
            return {}
    return dict(value)


# -- parsers shared with the admin API -------------------------------------


def parse_tenant(tenant_id: str, node: Node, *, created: float = 0.0) -> Tenant:
    """One tenant's fields (not its keys). Cross-references are checked by :func:`check_tenant_refs`."""
    status = node.str("status", "active", choices=TENANT_STATUSES)
    limits_node = node.child("limits")
    limits = _limits(limits_node)
    limits_node.finish()
    tenant = Tenant(
        id=tenant_id,
        name=node.str("name", tenant_id),
        plan=node.str("plan") or "",
        status=status or "active",
        subdomain=node.str("subdomain", None, pattern=SUBDOMAIN),
        allowed_models=_model_list(node, "allowed_models"),
        limits=frozen_map(limits),
        metadata=frozen_map(_metadata(node, "metadata")),
        created=node.float("created", created, min=0),
    )
    return tenant


def parse_key(node: Node, tenant_id: str, *, secret: bytes | None, default_id: str, created: float = 0.0) -> ApiKey:
    """A key declared by hash (``sha256:`` / ``hmac_sha256:`` / ``key_hash:``) or by plaintext ``key:`` (hashed here)."""
    key_id = node.str("id", default_id, pattern=KEY_ID)
    given = [k for k in ("key", "sha256", "hmac_sha256", "key_hash") if node.has(k)]
    plain = node.str("key", None)
    sha = node.str("sha256", None, pattern=HEX64)
    mac = node.str("hmac_sha256", None, pattern=HEX64)
    stored = node.str("key_hash", None, pattern=re.compile(r"(sha256|hmac-sha256):[0-9a-f]{64}"))
    key_hash = ""
    if len(given) != 1:
        node.error("", "give exactly one of key, sha256, hmac_sha256" + (f" (got {', '.join(given)})" if given else ""))
    elif plain is not None:
        if len(plain) < 16:
            node.error("key", "must be at least 16 characters")
        key_hash = hash_key(plain, secret)
    elif sha is not None:
        if secret is not None:
            node.error("sha256", "identity.key_secret is set, so keys are HMAC-SHA256 hashed: give hmac_sha256 or key")
        key_hash = "sha256:" + sha
    elif mac is not None:
        if secret is None:
            node.error("hmac_sha256", "needs identity.key_secret; without it give sha256 or key")
        key_hash = "hmac-sha256:" + mac
    elif stored is not None:
        key_hash = stored
    expires = _timestamp(node, "expires")
    key = ApiKey(
        id=key_id or default_id,
        tenant=tenant_id,
        key_hash=key_hash,
        name=node.str("name", "", nonempty=False),
        created=node.float("created", created, min=0),
        expires=expires,
        revoked=node.bool("revoked", False),
        models=_model_list(node, "models"),
    )
    return key


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


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
    if tenant.plan and tenant.plan not in plans:
        problems.add(_at(path, "plan"), f"unknown plan {tenant.plan!r} (known: {', '.join(sorted(plans))})")
    for i, m in enumerate(tenant.allowed_models or ()):
        if m not in models:
            problems.add(_at(path, f"allowed_models[{i}]"), f"unknown model {m!r}")
    if tenant.subdomain is not None:
        owner = subdomain_owner.get(tenant.subdomain)
        if owner is not None and owner != tenant.id:
            problems.add(_at(path, "subdomain"), f"{tenant.subdomain!r} is already the subdomain of tenant {owner!r}")


# -- the sections -----------------------------------------------------------


def parse_identity_sections(root: Node, models: Mapping[str, Any], listeners: Any = None) -> IdentitySections:
    enabled = root.has("identity") or root.has("tenants")
    if listeners is not None:
        _check_proxies(listeners.public.trusted_proxies, root.problems)
    identity = _identity(root.child("identity"), enabled)
    plans = _plans(root, models)
    tenants, keys = _tenants(root, identity, plans, models)
    registry = _registry(root.child("registry"))
    return IdentitySections(identity, frozen_map(plans), frozen_map(tenants), frozen_map(keys), registry)


def _check_proxies(proxies: tuple[str, ...], problems: Problems) -> None:
    for i, cidr in enumerate(proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            problems.add(f"listeners.public.trusted_proxies[{i}]", f"{cidr!r} is not an IP address or CIDR network")


def _identity(node: Node, enabled: bool) -> IdentityConfig:
    default_chain: tuple[str, ...] = (
        ("api_key", "jwt") if isinstance(node.data, dict) and "jwt" in node.data else ("api_key",)
    )
    chain = node.str_list("chain", default_chain)
    for i, name in enumerate(chain):
        if name not in IDENTIFIERS:
            node.problems.add(
                f"{node.at('chain')}[{i}]", f"unknown identifier {name!r} (known: {', '.join(IDENTIFIERS)})"
            )
    if len(set(chain)) != len(chain):
        node.error("chain", "names an identifier twice")
    secret = node.str("key_secret", None)
    if secret is not None and len(secret) < 32:
        node.error("key_secret", "must be at least 32 characters")
    ak = node.child("api_key")
    prefix = ak.str("prefix", "tg_", pattern=re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,15}"))
    headers = tuple(h.lower() for h in ak.str_list("headers", API_KEY_HEADERS))
    for i, h in enumerate(headers):
        if h not in API_KEY_HEADERS:
            ak.problems.add(f"{ak.at('headers')}[{i}]", f"must be one of {', '.join(API_KEY_HEADERS)}")
    ak.finish()
    jwt_node = node.child("jwt")
    jwt = _jwt(jwt_node) if isinstance(node.data.get("jwt"), dict) else None
    if "jwt" in chain and jwt is None:
        node.error("jwt", "is required when the chain includes jwt")
    sub = node.child("subdomain")
    base_domains = tuple(d.lower().strip(".") for d in sub.str_list("base_domains", ()))
    if "subdomain" in chain and not base_domains:
        sub.error("base_domains", "at least one base domain is required when the chain includes subdomain")
    sub.finish()
    hdr = node.child("header")
    header = hdr.str("name", "X-Tenant-ID", pattern=HEADER_NAME).lower()
    if header in API_KEY_HEADERS or header in ("host", "cookie"):
        hdr.error("name", f"{header!r} cannot carry a tenant claim")
    hdr.finish()
    q = node.child("query")
    query = q.str("name", "tenant", pattern=re.compile(r"[A-Za-z0-9_.-]{1,64}"))
    q.finish()
    end_user = _end_user(node.child("end_user"), tenant_header=header or "x-tenant-id")
    node.finish()
    return IdentityConfig(
        enabled=enabled,
        chain=tuple(chain),
        key_secret=secret.encode() if secret else None,
        key_prefix=prefix or "tg_",
        api_key_headers=headers,
        jwt=jwt,
        base_domains=base_domains,
        header=header or "x-tenant-id",
        query=query or "tenant",
        end_user=end_user,
    )


def _end_user(node: Node, *, tenant_header: str) -> EndUserConfig:
    d = EndUserConfig()
    sources = node.str_list("from", d.sources)
    for i, name in enumerate(sources):
        if name not in END_USER_SOURCES:
            node.problems.add(
                f"{node.at('from')}[{i}]", f"unknown end-user source {name!r} (known: {', '.join(END_USER_SOURCES)})"
            )
    if len(set(sources)) != len(sources):
        node.error("from", "names a source twice")
    elif "jwt" in sources and sources[0] != "jwt":
        node.error("from", "jwt must come first: a verified token's user claim is authoritative over body and header")
    header = node.str("header", d.header, pattern=HEADER_NAME)
    header = header.lower() if header else d.header
    if node.has("header") and "header" not in sources:
        node.error("header", "is set but from does not list header")
    if header in API_KEY_HEADERS or header in ("host", "cookie"):
        node.error("header", f"{header!r} cannot carry an end user")
    elif header == tenant_header:
        node.error(
            "header", f"{header!r} is identity.header.name, the tenant claim; use another header for the end user"
        )
    max_length = node.int("max_length", d.max_length, min=1, max=1024)
    node.finish()
    return EndUserConfig(sources=tuple(sources), header=header, max_length=max_length or d.max_length)


def _jwt(node: Node) -> JwtConfig:
    from tollgate.config.jwtkeys import (  # cryptography is imported only when JWT is configured
        load_jwks_file,
        load_jwt_key,
    )

    keys: list[JwtKey] = []
    for _i, item, path in node.items("keys"):
        key = load_jwt_key(Node(item, path, node.problems))
        if key is not None:
            keys.append(key)
    jwks_file = node.str("jwks_file", None)
    if jwks_file is not None:
        keys.extend(load_jwks_file(jwks_file, node.at("jwks_file"), node.problems))
    key_algs = tuple(dict.fromkeys(k.algorithm for k in keys))
    algorithms = node.str_list("algorithms", key_algs)
    for i, alg in enumerate(algorithms):
        if alg not in JWT_ALGORITHMS:
            node.problems.add(
                f"{node.at('algorithms')}[{i}]",
                f"unsupported algorithm {alg!r} (supported: {', '.join(JWT_ALGORITHMS)})",
            )
    for k in keys:
        if k.algorithm not in algorithms:
            node.error(
                "algorithms", f"key {k.kid or '(no kid)'} uses {k.algorithm}, which the allow-list does not include"
            )
    if not keys:
        node.error("keys", "at least one key (keys: or jwks_file:) is required")
    kids = [k.kid for k in keys if k.kid is not None]
    if len(set(kids)) != len(kids):
        node.error("keys", "two keys share a kid")
    audience = node.str_list("audience", None)
    jwt = JwtConfig(
        algorithms=tuple(algorithms),
        keys=tuple(keys),
        audience=tuple(audience) if audience else None,
        issuer=node.str("issuer", None),
        leeway=node.duration("leeway", 30.0, positive=False),
        tenant_claim=node.str("tenant_claim", "tenant"),
        user_claim=node.str("user_claim", "sub"),
        cache_size=node.int("cache_size", 10_000, min=0, max=10_000_000),
        jwks_file=jwks_file,
    )
    if jwt.leeway > 300:
        node.error("leeway", "must be at most 5m")
    node.finish()
    return jwt


def _plans(root: Node, models: Mapping[str, Any]) -> dict[str, Plan]:
    plans = dict(DEFAULT_PLANS)
    for name, node in root.named("plans", name_pattern=PLAN_NAME):
        limits = _limits(node, required=("monthly_requests", "concurrency"))
        allowed = _model_list(node, "allowed_models")
        for i, m in enumerate(allowed or ()):
            if m not in models:
                node.problems.add(f"{node.at('allowed_models')}[{i}]", f"unknown model {m!r}")
        plans[name] = Plan(name, Limits(**limits), allowed, node.str("description", name, nonempty=False))
        node.finish()
    return plans


def _tenants(
    root: Node, identity: IdentityConfig, plans: Mapping[str, Plan], models: Mapping[str, Any]
) -> tuple[dict[str, Tenant], dict[str, ApiKey]]:
    tenants: dict[str, Tenant] = {}
    keys: dict[str, ApiKey] = {}
    key_paths: dict[str, str] = {}
    hashes: dict[str, str] = {}
    subdomains: dict[str, str] = {}
    for tenant_id, node in root.named("tenants", name_pattern=TENANT_ID):
        tenant = parse_tenant(tenant_id, node)
        check_tenant_refs(tenant, node.path, node.problems, plans=plans, models=models, subdomain_owner=subdomains)
        if tenant.subdomain is not None:
            subdomains.setdefault(tenant.subdomain, tenant_id)
        for i, item, path in node.items("keys"):
            kn = Node(item, path, node.problems)
            key = parse_key(kn, tenant_id, secret=identity.key_secret, default_id=f"{tenant_id}-{i}")
            kn.finish()
            if key.id in keys:
                node.problems.add(f"{path}.id", f"key id {key.id!r} is already used at {key_paths[key.id]}")
                continue
            if key.key_hash and key.key_hash in hashes:
                node.problems.add(path, f"the same key is declared at {hashes[key.key_hash]}")
                continue
            for j, m in enumerate(key.models or ()):
                if m not in models:
                    node.problems.add(f"{path}.models[{j}]", f"unknown model {m!r}")
            keys[key.id] = key
            key_paths[key.id] = path
            hashes[key.key_hash] = path
        node.finish()
        tenants[tenant_id] = tenant
    return tenants, keys


def _registry(node: Node) -> RegistryConfig:
    path = node.str("file", None)
    url = node.str("redis", None)
    if path is not None and url is not None:
        node.error("redis", "give file or redis, not both")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        node.error("redis", "must be a redis://, rediss:// or unix:// URL")
    backend = "redis" if url is not None else "file" if path is not None else "memory"
    registry = RegistryConfig(
        backend=backend,
        path=path,
        url=url,
        prefix=node.str("prefix", "tollgate:registry", pattern=re.compile(r"[A-Za-z0-9_.:-]{1,64}")),
        poll_interval=node.duration("poll_interval", 0.25),
    )
    if registry.poll_interval > 1.0:
        node.error("poll_interval", "must be at most 1s (a revoked key must stop working within a second)")
    node.finish()
    return registry
