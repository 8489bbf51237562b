"""JWT verification keys from the config file or a JWKS file, each pinned to one algorithm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, PlainValidator, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

from tollgate.config.identity import JWT_ALGORITHMS, JwksSource, JwtAlgorithm, JwtConfig, JwtKey
from tollgate.config.validation import Doc, Found, check
from tollgate.config.values import Duration, DurationOrZero, NonEmptyStr, Str, StrList, matching

__all__ = ["HttpUrl", "JwtDoc", "JwtKeyDoc", "build_jwt", "jwks_keys", "jwks_source", "load_jwks_file"]

_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_KID = r"[\x21-\x7e]{1,128}"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _http_url(value: object) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("config", "must be a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("config", "must be an absolute http(s) URL")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise PydanticCustomError("config", "must be https (plain http only on loopback)")
    return value


HttpUrl = Annotated[str, PlainValidator(_http_url), WithJsonSchema({"type": "string", "format": "uri"})]
"""An absolute URL of keys or metadata: https, or http on loopback."""


def _check_type(alg: str, key: Any) -> str | None:
    """Why ``key`` cannot verify ``alg``, or None when it can."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if alg.startswith(("RS", "PS")):
        if not isinstance(key, rsa.RSAPublicKey):
            return f"{alg} needs an RSA public key"
        if key.key_size < 2048:
            return "RSA keys must be at least 2048 bits"
    elif alg.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _EC_CURVES[alg]:
            return f"{alg} needs an EC public key on {_EC_CURVES[alg]}"
    elif alg == "EdDSA" and not isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "EdDSA needs an Ed25519 or Ed448 public key"
    return None


class JwtKeyDoc(Doc):
    """One verification key, pinned to one algorithm: secret (HS*) or public_key / public_key_file (RS, PS, ES, EdDSA)."""

    kid: Annotated[str, Strict(), matching(_KID)] | None = None
    algorithm: JwtAlgorithm
    secret: Str | None = None
    """HMAC secret, at least 32 bytes for HS256 (48 for HS384, 64 for HS512)."""
    public_key: Str | None = None
    """PEM."""
    public_key_file: Str | None = None

    def load(self) -> tuple[JwtKey | None, list[tuple[str, str]]]:
        """The key, or None and the problems (field path, reason) that prevent it."""
        alg = self.algorithm
        if alg.startswith("HS"):
            if self.public_key is not None or self.public_key_file is not None:
                return None, [("public_key", f"{alg} is an HMAC algorithm: give secret, not a public key")]
            if self.secret is None:
                return None, [("secret", f"is required for {alg}")]
            if len(self.secret.encode()) < _HMAC_MIN_BYTES[alg]:
                return None, [("secret", f"must be at least {_HMAC_MIN_BYTES[alg]} bytes for {alg}")]
            return JwtKey(self.kid, alg, self.secret.encode()), []
        if self.secret is not None:
            return None, [
                ("secret", f"{alg} is an asymmetric algorithm: give public_key or public_key_file, not secret")
            ]
        if (self.public_key is None) == (self.public_key_file is None):
            return None, [("public_key", "give exactly one of public_key or public_key_file")]
        pem = self.public_key
        if self.public_key_file is not None:
            try:
                pem = Path(self.public_key_file).read_text()
            except OSError as exc:
                return None, [("public_key_file", f"cannot read: {exc.strerror or exc}")]
        import jwt  # PyJWT and cryptography, loaded by a config with JWT keys only

        try:
            key = jwt.get_algorithm_by_name(alg).prepare_key(pem)
        except Exception as exc:  # PyJWT and cryptography raise several kinds for a bad PEM
            return None, [("public_key", f"not a usable PEM public key for {alg}: {exc}")]
        why = _check_type(alg, key)
        if why is not None:
            return None, [("public_key", why)]
        return JwtKey(self.kid, alg, key), []


def load_jwks_file(path: str) -> tuple[list[JwtKey], list[str]]:
    """Every public key of a JWKS file (a key without ``alg`` gets the one its type implies), and problems."""
    try:
        text = Path(path).read_text()
        doc = json.loads(text)
    except OSError as exc:
        return [], [f"cannot read {path}: {exc.strerror or exc}"]
    except ValueError as exc:
        return [], [f"{path} is not JSON: {exc}"]
    return jwks_keys(doc, path)


def jwks_keys(doc: Any, where: str) -> tuple[list[JwtKey], list[str]]:
    """Every signing key of a parsed JWKS document, each pinned to one algorithm, and the problems (``where`` names
    the document in them)."""
    import jwt

    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return [], [f"{where} is not a JWKS document (no keys list)"]
    problems: list[str] = []
    out: list[JwtKey] = []
    for i, jwk in enumerate(doc["keys"]):
        at = f"{where} keys[{i}]"
        if not isinstance(jwk, dict):
            problems.append(f"{at}: must be a JSON object")
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            pyjwk = jwt.PyJWK(jwk)
        except jwt.PyJWKError as exc:
            problems.append(f"{at}: unusable key: {exc}")
            continue
        alg = pyjwk.algorithm_name
        if alg not in JWT_ALGORITHMS:
            problems.append(f"{at}: unsupported algorithm {alg!r}")
            continue
        if alg.startswith("HS"):
            if len(pyjwk.key) < _HMAC_MIN_BYTES[alg]:
                problems.append(f"{at}: HMAC secret must be at least {_HMAC_MIN_BYTES[alg]} bytes for {alg}")
                continue
        else:
            why = _check_type(alg, pyjwk.key)
            if why is not None:
                problems.append(f"{at}: {why}")
                continue
        out.append(JwtKey(pyjwk.key_id, alg, pyjwk.key))
    return out, problems


class JwtDoc(Doc):
    """JWT verification: the allowed algorithms, the keys (each pinned to one algorithm), the claims read."""

    algorithms: StrList | None = None
    """Allow-list ("none" never); default: the keys' algorithms."""
    keys: tuple[JwtKeyDoc, ...] = ()
    jwks_file: Str | None = None
    """A JWKS document whose signing keys are added to keys."""
    jwks_url: HttpUrl | None = None
    """The identity provider's JWKS (https, or http on loopback): fetched, cached, refetched when a token names an
    unknown key id (rotation needs no restart). Its keys must fit algorithms; HMAC keys are never taken from it."""
    jwks_max_age: Duration = 600.0
    """Keys older than this are fetched again before use."""
    jwks_refetch_interval: Duration = 30.0
    """At most one fetch per interval, whatever tokens arrive."""
    audience: StrList | None = None
    """Checked and required when set (a list is allowed)."""
    issuer: Str | None = None
    leeway: DurationOrZero = 30.0
    """At most 5m; exp is always required."""
    tenant_claim: NonEmptyStr = "tenant"
    """Dotted paths allowed: org.tenant."""
    user_claim: NonEmptyStr = "sub"
    cache_size: Annotated[int, Strict(), Field(ge=0, le=10_000_000)] = 10_000
    """Verified tokens are cached until their exp."""

    def load(self) -> tuple[list[JwtKey], list[tuple[str, str]]]:
        keys: list[JwtKey] = []
        problems: list[tuple[str, str]] = []
        for i, doc in enumerate(self.keys):
            key, found = doc.load()
            problems.extend((f"keys[{i}].{where}", reason) for where, reason in found)
            if key is not None:
                keys.append(key)
        if self.jwks_file is not None:
            more, found_in_file = load_jwks_file(self.jwks_file)
            keys.extend(more)
            problems.extend(("jwks_file", reason) for reason in found_in_file)
        return keys, problems

    def allowed(self, keys: list[JwtKey]) -> tuple[str, ...]:
        if self.algorithms is not None:
            return self.algorithms
        return tuple(dict.fromkeys(k.algorithm for k in keys))

    @check
    def keys_fit_the_allow_list(self) -> Found:
        keys, problems = self.load()
        yield from problems
        algorithms = self.allowed(keys)
        for i, alg in enumerate(algorithms):
            if alg not in JWT_ALGORITHMS:
                yield f"algorithms[{i}]", f"unsupported algorithm {alg!r} (supported: {', '.join(JWT_ALGORITHMS)})"
        for k in keys:
            if k.algorithm not in algorithms:
                yield (
                    "algorithms",
                    f"key {k.kid or '(no kid)'} uses {k.algorithm}, which the allow-list does not include",
                )
        if not self.keys and self.jwks_file is None and self.jwks_url is None:  # given ones that failed said why
            yield "keys", "at least one key (keys:, jwks_file: or jwks_url:) is required"
        if self.jwks_url is not None:
            if self.algorithms is None:
                yield "algorithms", "is required with jwks_url: the algorithms its keys may use"
            elif all(alg.startswith("HS") for alg in self.algorithms):
                yield "algorithms", "jwks_url needs an asymmetric algorithm (RS, PS, ES, EdDSA): it never serves HMAC"
        kids = [k.kid for k in keys if k.kid is not None]
        if len(set(kids)) != len(kids):
            yield "keys", "two keys share a kid"
        if self.leeway > 300:
            yield "leeway", "must be at most 5m"


def build_jwt(doc: JwtDoc) -> JwtConfig:
    keys, _problems = doc.load()
    return JwtConfig(
        algorithms=doc.allowed(keys),
        keys=tuple(keys),
        audience=doc.audience or None,
        issuer=doc.issuer,
        leeway=doc.leeway,
        tenant_claim=doc.tenant_claim,
        user_claim=doc.user_claim,
        cache_size=doc.cache_size,
        jwks_file=doc.jwks_file,
        jwks=jwks_source(doc.jwks_url, doc.jwks_max_age, doc.jwks_refetch_interval) if doc.jwks_url else None,
    )


def jwks_source(url: str, max_age: float, refetch_interval: float) -> JwksSource:
    return JwksSource(url=url, max_age=max_age, refetch_interval=refetch_interval)
