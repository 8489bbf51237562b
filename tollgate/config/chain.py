"""The ``identity:`` section (the identifier chain, API keys, JWT, claims, end users) and ``registry:``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict

from tollgate.config.identity import (
    API_KEY_HEADERS,
    END_USER_SOURCES,
    HEADER_NAME,
    IDENTIFIERS,
    EndUserConfig,
    IdentityConfig,
    RegistryConfig,
)
from tollgate.config.jwtkeys import JwtDoc, build_jwt
from tollgate.config.validation import Doc, Found, check
from tollgate.config.values import Duration, Str, StrList, matching

__all__ = ["EndUserDoc", "IdentityDoc", "RegistryDoc", "build_identity", "build_registry"]

HeaderName = Annotated[str, Strict(), matching(HEADER_NAME.pattern)]
_NOT_A_CLAIM = (*API_KEY_HEADERS, "host", "cookie")


class ApiKeyDoc(Doc):
    headers: StrList = API_KEY_HEADERS
    """Where a key may come: authorization (Bearer), x-api-key, api-key."""
    prefix: Annotated[str, Strict(), matching(r"[A-Za-z][A-Za-z0-9_-]{0,15}")] = "tg_"
    """Generated keys: the prefix + 43 characters (256 bits)."""


class SubdomainDoc(Doc):
    base_domains: StrList = ()
    """acme.llm.example.com -> acme (or the tenant whose subdomain is acme)."""


class HeaderDoc(Doc):
    name: HeaderName = "X-Tenant-ID"


class QueryDoc(Doc):
    name: Annotated[str, Strict(), matching(r"[A-Za-z0-9_.-]{1,64}")] = "tenant"


class EndUserDoc(Doc):
    """Who, inside the tenant the credential named, a request is for: a subdivision of the tenant, never another."""

    sources: Annotated[StrList, Field(alias="from")] = ("jwt",)
    """In precedence order, the first with a value wins: jwt (the token's user_claim; first when listed), body
    (OpenAI's request field "user"), header (the header below)."""
    header: HeaderName = "x-tollgate-end-user"
    max_length: Annotated[int, Strict(), Field(ge=1, le=1024)] = 256
    """A longer value (characters), one with a control character, or not valid UTF-8 is refused with a 400."""

    @check
    def sources_are_known(self) -> Found:
        for i, name in enumerate(self.sources):
            if name not in END_USER_SOURCES:
                yield f"from[{i}]", f"unknown end-user source {name!r} (known: {', '.join(END_USER_SOURCES)})"
        if len(set(self.sources)) != len(self.sources):
            yield "from", "names a source twice"
        elif "jwt" in self.sources and self.sources[0] != "jwt":
            yield "from", "jwt must come first: a verified token's user claim is authoritative over body and header"
        if "header" in self.model_fields_set and "header" not in self.sources:
            yield "header", "is set but from does not list header"


class IdentityDoc(Doc):
    """Credentials (api_key, jwt) authenticate; claims (subdomain, header, query) can be written by any client:
    on an untrusted listener they must name the credential's tenant."""

    chain: StrList | None = None
    """Identifiers tried in order: api_key, jwt, subdomain, header, query; default [api_key] ([api_key, jwt] when
    jwt is configured)."""
    key_secret: Str | None = None
    """Keys are stored as HMAC-SHA256(secret, key) with a secret, SHA-256(key) without; at least 32 characters.
    Changing it invalidates every key not declared in plaintext."""
    api_key: ApiKeyDoc = ApiKeyDoc()
    jwt: JwtDoc | None = None
    subdomain: SubdomainDoc = SubdomainDoc()
    header: HeaderDoc = HeaderDoc()
    query: QueryDoc = QueryDoc()
    end_user: EndUserDoc = EndUserDoc()

    def identifiers(self) -> tuple[str, ...]:
        if self.chain is not None:
            return self.chain
        return ("api_key", "jwt") if self.jwt is not None else ("api_key",)

    @check
    def chain_is_complete(self) -> Found:
        chain = self.identifiers()
        for i, name in enumerate(chain):
            if name not in IDENTIFIERS:
                yield f"chain[{i}]", f"unknown identifier {name!r} (known: {', '.join(IDENTIFIERS)})"
        if len(set(chain)) != len(chain):
            yield "chain", "names an identifier twice"
        if "jwt" in chain and self.jwt is None:
            yield "jwt", "is required when the chain includes jwt"
        if "subdomain" in chain and not self.subdomain.base_domains:
            yield "subdomain.base_domains", "at least one base domain is required when the chain includes subdomain"

    @check
    def key_secret_is_long(self) -> Found:
        if self.key_secret is not None and len(self.key_secret) < 32:
            yield "key_secret", "must be at least 32 characters"

    @check
    def headers_are_fit(self) -> Found:
        for i, h in enumerate(self.api_key.headers):
            if h.lower() not in API_KEY_HEADERS:
                yield f"api_key.headers[{i}]", f"must be one of {', '.join(API_KEY_HEADERS)}"
        header = self.header.name.lower()
        if header in _NOT_A_CLAIM:
            yield "header.name", f"{header!r} cannot carry a tenant claim"
        user = self.end_user.header.lower()
        if user in _NOT_A_CLAIM:
            yield "end_user.header", f"{user!r} cannot carry an end user"
        elif user == header:
            yield (
                "end_user.header",
                f"{user!r} is identity.header.name, the tenant claim; use another header for the end user",
            )


def build_identity(doc: IdentityDoc, *, enabled: bool) -> IdentityConfig:
    return IdentityConfig(
        enabled=enabled,
        chain=doc.identifiers(),
        key_secret=doc.key_secret.encode() if doc.key_secret else None,
        key_prefix=doc.api_key.prefix,
        api_key_headers=tuple(h.lower() for h in doc.api_key.headers),
        jwt=build_jwt(doc.jwt) if doc.jwt is not None else None,
        base_domains=tuple(d.lower().strip(".") for d in doc.subdomain.base_domains),
        header=doc.header.name.lower(),
        query=doc.query.name,
        end_user=EndUserConfig(
            sources=doc.end_user.sources, header=doc.end_user.header.lower(), max_length=doc.end_user.max_length
        ),
    )


class RegistryDoc(Doc):
    """Where runtime changes (admin API) persist: file, redis, or neither (memory: lost on restart). Every process
    polls it, so a revoked key stops everywhere within poll_interval."""

    file: Str | None = None
    """A JSON file, replaced atomically; relative to the config file."""
    redis: Str | None = None
    """redis://, rediss:// or unix:// URL."""
    prefix: Annotated[str, Strict(), matching(r"[A-Za-z0-9_.:-]{1,64}")] = "tollgate:registry"
    poll_interval: Duration = 0.25
    """At most 1s."""

    @check
    def one_backend(self) -> Found:
        if self.file is not None and self.redis is not None:
            yield "redis", "give file or redis, not both"
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            yield "redis", "must be a redis://, rediss:// or unix:// URL"
        if self.poll_interval > 1.0:
            yield "poll_interval", "must be at most 1s (a revoked key must stop working within a second)"


def build_registry(doc: RegistryDoc) -> RegistryConfig:
    backend = "redis" if doc.redis is not None else "file" if doc.file is not None else "memory"
    return RegistryConfig(
        backend=backend, path=doc.file, url=doc.redis, prefix=doc.prefix, poll_interval=doc.poll_interval
    )
