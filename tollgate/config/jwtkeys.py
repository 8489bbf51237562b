"""JWT verification keys from the config file or a JWKS file, each pinned to one algorithm."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tollgate.config.reader import Node, Problems

__all__ = ["load_jwks_file", "load_jwt_key"]

_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_KID = re.compile(r"[\x21-\x7e]{1,128}")


def _check_type(alg: str, key: Any) -> str | None:
    """Why ``key`` cannot verify ``alg``, or None when it can."""
    if alg.startswith(("RS", "PS")):
        if not isinstance(key, rsa.RSAPublicKey):
            return f"{alg} needs an RSA public key"
        if key.key_size < 2048:
            return "RSA keys must be at least 2048 bits"
    elif alg.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != _EC_CURVES[alg]:
            return f"{alg} needs an EC public key on {_EC_CURVES[alg]}"
    elif alg == "EdDSA":
        if not isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            return "EdDSA needs an Ed25519 or Ed448 public key"
    return None


def load_jwt_key(node: Node) -> Any:
    """``{kid, algorithm, public_key | public_key_file | secret}`` -> :class:`JwtKey`, or None after a problem."""
    from tollgate.config.identity import JWT_ALGORITHMS, JwtKey

    kid = node.str("kid", None, pattern=_KID)
    alg = node.str("algorithm", choices=JWT_ALGORITHMS)
    secret = node.str("secret", None)
    pem = node.str("public_key", None)
    pem_file = node.str("public_key_file", None)
    node.finish()
    if alg is None:
        return None
    if alg.startswith("HS"):
        if pem is not None or pem_file is not None:
            node.error("public_key", f"{alg} is an HMAC algorithm: give secret, not a public key")
            return None
        if secret is None:
            node.error("secret", f"is required for {alg}")
            return None
        if len(secret.encode()) < _HMAC_MIN_BYTES[alg]:
            node.error("secret", f"must be at least {_HMAC_MIN_BYTES[alg]} bytes for {alg}")
            return None
        return JwtKey(kid, alg, secret.encode())
    if secret is not None:
        node.error("secret", f"{alg} is an asymmetric algorithm: give public_key or public_key_file, not secret")
        return None
    if (pem is None) == (pem_file is None):
        node.error("public_key", "give exactly one of public_key or public_key_file")
        return None
    if pem_file is not None:
        try:
            pem = Path(pem_file).read_text()
        except OSError as exc:
            node.error("public_key_file", f"cannot read: {exc.strerror or exc}")
            return None
    try:
        key = jwt.get_algorithm_by_name(alg).prepare_key(pem)
    except Exception as exc:  # PyJWT and cryptography raise several kinds for a bad PEM
        node.error("public_key", f"not a usable PEM public key for {alg}: {exc}")
        return None
    why = _check_type(alg, key)
    if why is not None:
        node.error("public_key", why)
        return None
    return JwtKey(kid, alg, key)


def load_jwks_file(path: str, at: str, problems: Problems) -> list[Any]:
    """Every public key of a JWKS document; a key without ``alg`` gets the one its type implies."""
    from tollgate.config.identity import JWT_ALGORITHMS, JwtKey

    try:
        text = Path(path).read_text()
        doc = json.loads(text)
    except OSError as exc:
        problems.add(at, f"cannot read {path}: {exc.strerror or exc}")
        return []
    except ValueError as exc:
        problems.add(at, f"{path} is not JSON: {exc}")
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        problems.add(at, f"{path} is not a JWKS document (no keys list)")
        return []
    out: list[Any] = []
    for i, jwk in enumerate(doc["keys"]):
        where = f"{at}: {path} keys[{i}]"
        if not isinstance(jwk, dict):
            problems.add(where, "must be a JSON object")
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        try:
            pyjwk = jwt.PyJWK(jwk)
        except jwt.PyJWKError as exc:
            problems.add(where, f"unusable key: {exc}")
            continue
        alg = pyjwk.algorithm_name
        if alg not in JWT_ALGORITHMS:
            problems.add(where, f"unsupported algorithm {alg!r}")
            continue
        if alg.startswith("HS"):
            if len(pyjwk.key) < _HMAC_MIN_BYTES[alg]:
                problems.add(where, f"HMAC secret must be at least {_HMAC_MIN_BYTES[alg]} bytes for {alg}")
                continue
        else:
            why = _check_type(alg, pyjwk.key)
            if why is not None:
                problems.add(where, why)
                continue
        out.append(JwtKey(pyjwk.key_id, alg, pyjwk.key))
    return out
