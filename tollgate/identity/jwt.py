"""JWT verification: algorithm allow-list, one pinned algorithm per key, ``exp`` required, verified tokens cached until expiry.

Keys come from the config (inline, a key file, a JWKS file) and, with ``jwks_url``, from a :class:`JwksKeys`: a
token the cached keys cannot check raises :class:`SigningKeysStale`, and the caller refreshes and retries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from tollgate.config.identity import JwtConfig, JwtKey
from tollgate.errors import Unauthenticated
from tollgate.identity.jwks import Fetch, JwksKeys, SigningKeysStale, fetch_json

__all__ = [
    "JwtVerifier",
    "VerifiedToken",
    "claim_at",
    "looks_like_jwt",
]


def looks_like_jwt(token: str) -> bool:
    """A compact JWS: three base64url parts, the header a JSON object (``eyJ`` = ``{"``)."""
    return token.startswith("eyJ") and token.count(".") == 2


class VerifiedToken:
    """What a verified token says, plus the principal last built from it (reused while the directory is unchanged)."""

    __slots__ = ("expires", "tenant", "user", "principal", "generation", "keys_revision")

    def __init__(self, expires: float, tenant: str, user: str | None) -> None:
        self.expires = expires
        self.tenant = tenant
        self.user = user
        self.principal: Any = None
        self.generation = -1
        self.keys_revision = 0


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a token's claims (``realm_access.roles``), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class JwtVerifier:
    def __init__(self, config: JwtConfig, clock: Callable[[], float], fetch: Fetch = fetch_json) -> None:
        # Loaded with the verifier, as the config is built: never first on a serving loop.
        importlib.import_module("jwt")
        self.config = config
        self.clock = clock
        self.jwks = (
            JwksKeys(config.jwks, algorithms=config.algorithms, clock=clock, fetch=fetch)
            if config.jwks is not None
            else None
        )
        self.algorithms = frozenset(config.algorithms)
        self.by_kid: dict[str, JwtKey] = {k.kid: k for k in config.keys if k.kid is not None}
        self.by_alg: dict[str, tuple[JwtKey, ...]] = {}
        for alg in config.algorithms:
            self.by_alg[alg] = tuple(k for k in config.keys if k.algorithm == alg)
        required = ["exp"]
        if config.audience:
            required.append("aud")
        if config.issuer:
            required.append("iss")
        self.options: dict[str, Any] = {"require": required, "verify_aud": config.audience is not None}
        self.audience = list(config.audience) if config.audience else None
        self.cache: dict[str, VerifiedToken] = {}

    def verify(self, token: str) -> VerifiedToken:
        hit = self.cache.get(token)
        if hit is not None:
            jwks = self.jwks
            if jwks is not None and jwks.stale():  # keys past their max age: refresh before trusting the cache
                raise SigningKeysStale(jwks, "the gateway's signing keys are being refreshed")
            if self.clock() < hit.expires and (jwks is None or hit.keys_revision == jwks.revision):
                return hit
            del self.cache[token]
        verified = self._verify(token)
        if self.config.cache_size:
            if len(self.cache) >= self.config.cache_size:
                self._evict()
            self.cache[token] = verified
        return verified

    def _evict(self) -> None:
        now = self.clock()
        expired = [t for t, v in self.cache.items() if v.expires <= now]
        for t in expired:
            del self.cache[t]
        while len(self.cache) >= self.config.cache_size:
            del self.cache[next(iter(self.cache))]

    def _keys_for(self, token: str) -> tuple[JwtKey, ...]:
        import jwt  # PyJWT and cryptography: loaded by a gateway that verifies JWTs only (sys.modules after the first)

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthenticated("the token's signing algorithm is not allowed by this gateway")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's key id (kid) is not a string")
        jwks = self.jwks
        if jwks is not None and jwks.stale():
            raise SigningKeysStale(jwks, "the gateway's signing keys are being refreshed")
        if kid is not None:
            key = self.by_kid.get(kid)
            if key is not None and key.algorithm == alg:
                return (key,)
            if jwks is not None:
                found = jwks.keys_for(kid, alg)
                if found:
                    return found
                if jwks.may_refetch():
                    raise SigningKeysStale(jwks, "the token names a signing key (kid) not fetched yet")
            raise Unauthenticated("the token names a signing key (kid) this gateway does not know for its algorithm")
        keys = self.by_alg.get(alg, ()) + (jwks.keys_for(None, alg) if jwks is not None else ())
        if not keys:
            raise Unauthenticated("the gateway has no key for the token's algorithm")
        return keys

    def _verify(self, token: str) -> VerifiedToken:
        import jwt

        cfg = self.config
        claims: dict[str, Any] | None = None
        for key in self._keys_for(token):
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=self.audience,
                    issuer=cfg.issuer,
                    leeway=cfg.leeway,
                    options=self.options,  # type: ignore[arg-type]
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("the token has expired") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(f"the token lacks the required {exc.claim!r} claim") from None
            except jwt.InvalidAudienceError:
                raise Unauthenticated("the token's audience (aud) is not this gateway") from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated("the token's issuer (iss) is not trusted") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("the token is not valid yet (nbf/iat in the future)") from None
            except jwt.PyJWTError:
                raise Unauthenticated("the token is not valid") from None
        if claims is None:
            raise Unauthenticated("the token's signature does not verify")
        tenant = claim_at(claims, cfg.tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated(f"the token has no {cfg.tenant_claim!r} claim naming a tenant")
        user = claim_at(claims, cfg.user_claim)
        exp = claims["exp"]
        verified = VerifiedToken(float(exp), tenant, user if isinstance(user, str) else None)
        if self.jwks is not None:
            verified.keys_revision = self.jwks.revision  # a key withdrawn later makes it verify again
        return verified
