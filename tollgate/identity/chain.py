"""The identifier chain: it turns a request into a :class:`Principal`, or refuses it (the identify stage runs it).

Credentials (API key, JWT) authenticate. Claims (subdomain, header, query
parameter) are words the client can write freely: alone they identify a
caller only on a listener marked ``trusted``; otherwise every claim present
must name the credential's tenant, or the request is refused (403).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from tollgate.config.model import Config
from tollgate.errors import Forbidden, Unauthenticated
from tollgate.identity.directory import ANONYMOUS, Directory, Principal, Refusal
from tollgate.identity.end_user import EndUsers
from tollgate.identity.jwks import SigningKeysStale
from tollgate.identity.jwt import JwtVerifier, looks_like_jwt

if TYPE_CHECKING:
    import asyncio

    from multidict import CIMultiDictProxy, MultiDictProxy

__all__ = [
    "IPNetwork",
    "IdentityRuntime",
    "KeyedSha256",
    "TenantRefused",
    "authenticate",
    "authenticate_fresh",
    "client_ip",
    "compile_identity",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_DUMMY_DIGEST = bytes(32)
_ANONYMOUS: Final = ANONYMOUS  # read from a native static, not the module's dictionary (compiled)


class Request(Protocol):
    """What the chain reads of a request: the public listener's (``tollgate.edge.messages.Request``) or aiohttp's
    (the self-service and stored-response routes). A protocol, so a compiled build checks neither's class."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def query(self) -> MultiDictProxy[str]: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...


class IdentityRuntime:
    """The identifier chain compiled for one config version."""

    __slots__ = (
        "enabled",
        "credentials",
        "claims",
        "trusted",
        "proxies",
        "key_headers",
        "use_authorization",
        "jwt",
        "base_domains",
        "header",
        "query",
        "digest",
        "clock",
        "labels",
        "end_users",
    )

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        ident = config.identity
        self.enabled = ident.enabled
        self.clock = clock
        self.credentials = tuple(c for c in ident.chain if c in ("api_key", "jwt"))
        self.claims = tuple(c for c in ident.chain if c in ("subdomain", "header", "query"))
        self.trusted = config.listeners.public.trusted
        self.proxies: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in config.listeners.public.trusted_proxies
        )
        self.use_authorization = "authorization" in ident.api_key_headers
        self.key_headers = tuple(h for h in ident.api_key_headers if h != "authorization")
        self.jwt = JwtVerifier(ident.jwt, clock) if ident.jwt is not None and "jwt" in ident.chain else None
        self.base_domains = tuple("." + d for d in ident.base_domains)
        self.header = ident.header
        self.query = ident.query
        self.end_users = EndUsers(ident.end_user, ident.jwt.user_claim if ident.jwt is not None else "sub")
        secret = ident.key_secret
        if secret is not None:
            self.digest: Callable[[bytes], bytes] = KeyedSha256(secret).digest
        else:
            self.digest = lambda data: hashlib.sha256(data).digest()
        self.labels = {
            "subdomain": "the subdomain",
            "header": f"the {ident.header} header",
            "query": f"the query parameter {ident.query!r}",
        }


def compile_identity(config: Config) -> IdentityRuntime:
    return IdentityRuntime(config)


class TenantRefused(Forbidden):
    """A known tenant refused (suspended, or on a plan that is not configured); ``principal`` is who was refused
    (tenant, and key when a key named it), so that the refusal is recorded and audited as that tenant's."""

    def __init__(self, refusal: Refusal, principal: Principal | None) -> None:
        super().__init__(refusal.message, code=refusal.code)
        self.principal = principal


def _refuse(refusal: Refusal, principal: Principal | None = None) -> Exception:
    if refusal.forbidden:
        return TenantRefused(refusal, principal)
    return Unauthenticated(refusal.message, code=refusal.code)


class KeyedSha256:
    """HMAC-SHA256 (RFC 2104) under one secret, from the two SHA-256 states the secret's padded blocks leave, made
    once: each digest copies them, instead of deriving them from the secret again (``hmac.digest`` does, through
    OpenSSL's algorithm and property lookups: about 1.4 µs a key against 0.6). The same digest as
    ``hmac.digest(secret, data, "sha256")`` (tests/identity/test_keyed_digest.py)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > _SHA256_BLOCK:  # a secret longer than a block is hashed first (RFC 2104)
            secret = hashlib.sha256(secret).digest()
        block = secret.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes([b ^ 0x36 for b in block]))
        self._outer = hashlib.sha256(bytes([b ^ 0x5C for b in block]))

    def digest(self, data: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_SHA256_BLOCK: Final = 64


def _by_key(key: str, identity: IdentityRuntime, directory: Directory) -> Principal:
    """One hash, one dict lookup, one constant-time compare: the same path for every wrong key, whatever its length."""
    digest = identity.digest(key.encode("utf-8", "surrogateescape"))
    entry = directory.keys.get(digest)
    stored = entry.digest if entry is not None else _DUMMY_DIGEST
    if not hmac.compare_digest(stored, digest) or entry is None:
        raise Unauthenticated("incorrect API key provided")
    if entry.refusal is not None:
        raise _refuse(entry.refusal, entry.principal)
    if entry.expires is not None and identity.clock() >= entry.expires:
        raise Unauthenticated("this API key has expired")
    principal = entry.principal
    if principal is None:  # the tenant's refusal above covers it; kept for the type checker
        raise Forbidden("this API key's tenant cannot be used", code="tenant_unavailable")
    return principal


def _by_jwt(token: str, verifier: JwtVerifier, directory: Directory) -> Principal:
    verified = verifier.verify(token)
    if verified.generation == directory.generation and verified.principal is not None:
        return verified.principal  # type: ignore[no-any-return]
    entry = directory.tenants.get(verified.tenant)
    if entry is None:
        raise Unauthenticated("the token's tenant is not known to this gateway")
    if entry.refusal is not None:
        raise _refuse(entry.refusal, entry.principal)
    assert entry.principal is not None
    principal = Principal(
        entry.principal.tenant,
        entry.principal.plan,
        entry.principal.limits,
        entry.principal.allowed_models,
        key_id=None,
        user=verified.user,
        via="jwt",
    )
    verified.principal = principal
    verified.generation = directory.generation
    return principal


def _claim(name: str, request: Request, identity: IdentityRuntime, directory: Directory) -> str | None:
    if name == "header":
        return request.headers.get(identity.header)
    if name == "query":
        return request.query.get(identity.query)
    host = request.headers.get("host")
    if not host:
        return None
    host = host.lower()
    if host.endswith("]") or host.count(":") != 1:
        hostname = host
    else:
        hostname = host.rsplit(":", 1)[0]
    for base in identity.base_domains:
        if hostname.endswith(base) and len(hostname) > len(base):
            label = hostname[: -len(base)]
            return directory.subdomains.get(label, label)
    return None


async def authenticate_fresh(request: Request, identity: IdentityRuntime, directory: Directory) -> Principal:
    """:func:`authenticate`, refreshing the JWKS keys once when the cached ones cannot check the request's token."""
    try:
        return authenticate(request, identity, directory)
    except SigningKeysStale as stale:
        await stale.keys.refresh()
        return authenticate(request, identity, directory)


def authenticate(request: Request, identity: IdentityRuntime, directory: Directory) -> Principal:
    """The principal of ``request``; raises :class:`Unauthenticated` (401) or :class:`Forbidden` (403)."""
    if not identity.enabled:
        return _ANONYMOUS
    headers = request.headers
    principal: Principal | None = None
    bearer: str | None = None
    if identity.use_authorization or identity.jwt is not None:
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, rest = auth.partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthenticated("send the credential as Authorization: Bearer <key>")
            bearer = rest.strip()
    for name in identity.credentials:
        if name == "api_key":
            key = None
            if (
                bearer is not None
                and identity.use_authorization
                and not (identity.jwt is not None and looks_like_jwt(bearer))
            ):
                key = bearer
            else:
                for h in identity.key_headers:
                    key = headers.get(h)
                    if key is not None:
                        break
            if key is not None:
                principal = _by_key(key, identity, directory)
                break
        elif identity.jwt is not None and bearer is not None and looks_like_jwt(bearer):
            principal = _by_jwt(bearer, identity.jwt, directory)
            break
    if principal is None and bearer is not None:
        raise Unauthenticated("incorrect API key provided")
    claimed: str | None = None
    claimed_by = ""
    for name in identity.claims:
        value = _claim(name, request, identity, directory)
        if value is None:
            continue
        if principal is not None:
            if value != principal.tenant:
                raise Forbidden(
                    f"{identity.labels[name]} names a different tenant than your credential",
                    code="tenant_mismatch",
                )
        elif claimed is None:
            claimed, claimed_by = value, name
        elif value != claimed:
            raise Forbidden(
                f"{identity.labels[claimed_by]} and {identity.labels[name]} name different tenants",
                code="tenant_mismatch",
            )
    if principal is not None:
        return principal
    if claimed is None:
        raise Unauthenticated(
            "you didn't provide an API key: send it as Authorization: Bearer <key>",
            code="missing_api_key",
        )
    if not identity.trusted:
        raise Unauthenticated(
            f"{identity.labels[claimed_by]} alone does not identify a caller on this listener; send an API key",
            code="missing_api_key",
        )
    entry = directory.tenants.get(claimed)
    if entry is None:
        raise Unauthenticated(f"{identity.labels[claimed_by]} names an unknown tenant", code="unknown_tenant")
    if entry.refusal is not None:
        raise _refuse(entry.refusal, entry.principal)
    assert entry.principal is not None
    return entry.principal


def client_ip(request: Request, proxies: tuple[IPNetwork, ...] = ()) -> str:
    """The peer address, or, when the peer is a trusted proxy, the first untrusted hop of X-Forwarded-For from the right."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    current = str(peer[0]) if peer else "unknown"
    if not proxies:
        return current
    forwarded = request.headers.getall("x-forwarded-for", ())
    if not forwarded:
        return current
    try:
        addr = ipaddress.ip_address(current)
    except ValueError:
        return current
    if not any(addr in net for net in proxies):
        return current
    hops = ",".join(forwarded).split(",")
    for hop in reversed(hops):
        try:
            addr = ipaddress.ip_address(hop.strip())
        except ValueError:
            return current  # a garbled hop: believe no further than the last proxy we trust
        current = str(addr)
        if not any(addr in net for net in proxies):
            return current
    return current
