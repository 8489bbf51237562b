"""Fixtures for identity tests: the keys tests send, signing keys, configs with tenants."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

# Keys that tests send; configs declare them by hash or plaintext.
ACME_KEY = "tg_acme-test-key-0123456789abcdefghijklmnop"
GLOBEX_KEY = "tg_globex-test-key-0123456789abcdefghijklmn"
SLEEPY_KEY = "tg_sleepy-test-key-0123456789abcdefghijklmn"
SCOPED_KEY = "tg_scoped-test-key-0123456789abcdefghijklmn"
ADMIN_TOKEN = "admin-token-for-identity-tests-0123456789"
HS_SECRET = "hs256-shared-secret-for-tests-0123456789abcdef"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="session")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_public_pem(rsa_private: rsa.RSAPrivateKey) -> str:
    return (
        rsa_private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="session")
def ec_private() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def ec_public_pem(ec_private: ec.EllipticCurvePrivateKey) -> str:
    return (
        ec_private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def identity_doc(
    upstream_url: str = "http://127.0.0.1:9/v1",
    *,
    identity: dict[str, Any] | None = None,
    tenants: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A config document with three tenants: acme (active), globex (active), sleepy (suspended)."""
    doc: dict[str, Any] = {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {"mock": {"base_url": upstream_url, "api_key": "sk-upstream-secret"}},
        "models": {
            "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
            "gpt-4o": {"deployments": [{"upstream": "mock"}]},
            "text-embedding-3-small": {"deployments": [{"upstream": "mock"}]},
        },
        "identity": identity
        if identity is not None
        else {"chain": ["api_key", "subdomain", "header", "query"], "subdomain": {"base_domains": ["llm.example.com"]}},
        "tenants": tenants
        if tenants is not None
        else {
            "acme": {
                "plan": "enterprise",
                "subdomain": "acme",
                "keys": [
                    {"id": "acme-main", "sha256": sha256_hex(ACME_KEY)},
                    {"id": "acme-scoped", "key": SCOPED_KEY, "models": ["gpt-4o-mini"]},
                ],
            },
            "globex": {"plan": "personal", "keys": [{"id": "globex-main", "sha256": sha256_hex(GLOBEX_KEY)}]},
            "sleepy": {"plan": "personal", "status": "suspended", "keys": [{"id": "sleepy-main", "key": SLEEPY_KEY}]},
        },
    }
    doc.update(overrides)
    return doc


@pytest.fixture
def tmp_registry(tmp_path: Path) -> Path:
    return tmp_path / "registry.json"
