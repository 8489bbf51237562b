"""JWT identification: the algorithm allow-list, pinned key algorithms, required claims, and the verified-token cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tollgate.config import ConfigError
from tollgate.errors import Forbidden, Unauthenticated

from .conftest import ACME_KEY, HS_SECRET, identity_doc
from .helpers import Identified

AUD, ISS = "tollgate", "https://idp.test/"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = sign(signing_input.encode()) if sign is not None else b""
    return f"{signing_input}.{_b64(signature)}"


def _claims(**over: Any) -> dict[str, Any]:
    claims = {"tenant": "acme", "sub": "alice@acme", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 600}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.fixture
def ident(rsa_public_pem: str, ec_public_pem: str) -> Identified:
    doc = identity_doc(
        identity={
            "chain": ["api_key", "jwt", "header"],
            "jwt": {
                "keys": [
                    {"kid": "rs", "algorithm": "RS256", "public_key": rsa_public_pem},
                    {"kid": "es", "algorithm": "ES256", "public_key": ec_public_pem},
                    {"kid": "hs", "algorithm": "HS256", "secret": HS_SECRET},
                ],
                "audience": AUD,
                "issuer": ISS,
                "leeway": "5s",
            },
        }
    )
    return Identified(doc)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rs256_es256_and_hs256_tokens_identify_tenant_and_user(
    ident: Identified, rsa_private: rsa.RSAPrivateKey, ec_private: ec.EllipticCurvePrivateKey
) -> None:
    tokens = [
        jwt.encode(_claims(), rsa_private, algorithm="RS256", headers={"kid": "rs"}),
        jwt.encode(_claims(), ec_private, algorithm="ES256", headers={"kid": "es"}),
        jwt.encode(_claims(), HS_SECRET, algorithm="HS256", headers={"kid": "hs"}),
        jwt.encode(_claims(), rsa_private, algorithm="RS256"),  # no kid: the keys of its algorithm are tried
    ]
    for token in tokens:
        p = ident.principal(_bearer(token))
        assert (p.tenant, p.user, p.via, p.plan) == ("acme", "alice@acme", "jwt", "enterprise")


def test_alg_none_is_unauthenticated(ident: Identified) -> None:
    for alg in ("none", "None", "NONE"):
        with pytest.raises(Unauthenticated):
            ident.principal(_bearer(_forge({"alg": alg, "typ": "JWT"}, _claims())))
        with pytest.raises(Unauthenticated):
            ident.principal(_bearer(_forge({"alg": alg, "kid": "rs"}, _claims())))


def test_hs256_signed_with_the_rs_public_key_is_unauthenticated(ident: Identified, rsa_public_pem: str) -> None:
    def sign(data: bytes) -> bytes:
        return hmac.new(rsa_public_pem.encode(), data, hashlib.sha256).digest()

    for header in ({"alg": "HS256", "kid": "rs"}, {"alg": "HS256"}, {"alg": "HS256", "kid": "hs"}):
        with pytest.raises(Unauthenticated):
            ident.principal(_bearer(_forge(header, _claims(), sign)))


def test_expired_token_is_unauthenticated(ident: Identified, rsa_private: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(_claims(exp=int(time.time()) - 60), rsa_private, algorithm="RS256", headers={"kid": "rs"})
    with pytest.raises(Unauthenticated, match="expired"):
        ident.principal(_bearer(token))


def test_wrong_audience_wrong_issuer_and_missing_exp_are_unauthenticated(
    ident: Identified, rsa_private: rsa.RSAPrivateKey
) -> None:
    for claims, reason in (
        (_claims(aud="someone-else"), "audience"),
        (_claims(aud=None), "aud"),
        (_claims(iss="https://evil.test/"), "issuer"),
        (_claims(exp=None), "exp"),
    ):
        token = jwt.encode(claims, rsa_private, algorithm="RS256", headers={"kid": "rs"})
        with pytest.raises(Unauthenticated, match=reason):
            ident.principal(_bearer(token))


def test_token_signed_by_another_key_or_naming_an_unknown_kid_is_unauthenticated(ident: Identified) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for headers in ({"kid": "rs"}, {"kid": "unknown"}, {}):
        with pytest.raises(Unauthenticated):
            ident.principal(_bearer(jwt.encode(_claims(), other, algorithm="RS256", headers=headers)))


def test_token_for_unknown_or_suspended_tenant_is_refused(ident: Identified, rsa_private: rsa.RSAPrivateKey) -> None:
    with pytest.raises(Unauthenticated):
        ident.principal(_bearer(jwt.encode(_claims(tenant="nobody"), rsa_private, algorithm="RS256")))
    with pytest.raises(Forbidden):
        ident.principal(_bearer(jwt.encode(_claims(tenant="sleepy"), rsa_private, algorithm="RS256")))


def test_tenant_header_must_agree_with_the_tokens_tenant(ident: Identified, rsa_private: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(_claims(), rsa_private, algorithm="RS256")
    with pytest.raises(Forbidden):
        ident.principal({**_bearer(token), "X-Tenant-ID": "globex"})


def test_verified_token_is_cached_until_exp_and_a_suspension_still_applies_at_once(
    ident: Identified, rsa_private: rsa.RSAPrivateKey
) -> None:
    exp = int(time.time()) + 600
    token = jwt.encode(_claims(exp=exp), rsa_private, algorithm="RS256")
    first = ident.principal(_bearer(token))
    assert ident.identity.jwt is not None and ident.identity.jwt.cache[token].expires == exp
    assert ident.principal(_bearer(token)) is first  # no second verification, no new principal
    acme = ident.directory.tenants["acme"].tenant.to_json()
    ident.directory.apply({"t:acme": {**acme, "status": "suspended"}})
    with pytest.raises(Forbidden):
        ident.principal(_bearer(token))


def test_a_bearer_that_is_not_a_jwt_is_still_tried_as_an_api_key(ident: Identified) -> None:
    assert ident.principal(_bearer(ACME_KEY)).key_id == "acme-main"


def test_jwks_file_keys_verify_tokens(tmp_path: Path, rsa_private: rsa.RSAPrivateKey) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_private.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "from-jwks", "alg": "RS256", "use": "sig"}]}))
    ident = Identified(identity_doc(identity={"chain": ["jwt"], "jwt": {"jwks_file": str(jwks), "audience": AUD}}))
    token = jwt.encode(_claims(iss=None), rsa_private, algorithm="RS256", headers={"kid": "from-jwks"})
    assert ident.principal(_bearer(token)).tenant == "acme"


def test_jwt_config_refuses_weak_or_mismatched_keys(rsa_public_pem: str, ec_public_pem: str) -> None:
    doc = identity_doc(
        identity={
            "chain": ["jwt"],
            "jwt": {
                "algorithms": ["RS256", "none"],
                "keys": [
                    {"kid": "a", "algorithm": "HS256", "secret": "too-short"},
                    {"kid": "b", "algorithm": "ES256", "public_key": rsa_public_pem},
                    {"kid": "c", "algorithm": "HS256", "public_key": rsa_public_pem},
                    {"kid": "d", "algorithm": "RS256", "public_key": ec_public_pem},
                ],
            },
        }
    )
    with pytest.raises(ConfigError) as exc:
        Identified(doc)
    text = "\n".join(exc.value.problems)
    for expected in (
        "identity.jwt.keys[0].secret: must be at least 32 bytes",
        "identity.jwt.keys[1].public_key: ",
        "identity.jwt.keys[2].public_key: HS256 is an HMAC algorithm",
        "identity.jwt.keys[3].public_key: ",
        "identity.jwt.algorithms[1]: unsupported algorithm 'none'",
    ):
        assert expected in text
