"""The admin: section: principals and OIDC sign-on, each problem named by its field path; tokens kept as hashes."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tollgate.config import ConfigError, config_from_dict

from ..identity.conftest import ADMIN_TOKEN, identity_doc, sha256_hex

TOKEN = "a-principal-token-0123456789"


def _doc(admin: dict[str, Any], listener_token: str | None = ADMIN_TOKEN) -> dict[str, Any]:
    listener: dict[str, Any] = {"enabled": True}
    if listener_token is not None:
        listener["token"] = listener_token
    return identity_doc(listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": listener}, admin=admin)


def _problems(admin: dict[str, Any], listener_token: str | None = ADMIN_TOKEN) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(_doc(admin, listener_token), env={"OPS_TOKEN": TOKEN})
    return exc.value.problems


def test_principals_are_kept_as_hashes_beside_the_listener_token_as_the_principal_admin() -> None:
    config = config_from_dict(
        _doc(
            {
                "principals": [
                    {"name": "ops", "role": "operator", "token": "${OPS_TOKEN}"},
                    {
                        "name": "acme-admin",
                        "role": "tenant_admin",
                        "token_sha256": sha256_hex("x" * 20),
                        "tenants": ["acme"],
                    },
                ]
            }
        ),
        env={"OPS_TOKEN": TOKEN},
    )
    got = {p.name: (p.role, p.token_sha256, p.tenants) for p in config.admin.principals}
    assert got == {
        "admin": ("admin", hashlib.sha256(ADMIN_TOKEN.encode()).digest(), None),
        "ops": ("operator", hashlib.sha256(TOKEN.encode()).digest(), None),
        "acme-admin": ("tenant_admin", hashlib.sha256(b"x" * 20).digest(), frozenset({"acme"})),
    }
    assert TOKEN not in repr(config.admin)
    assert config.admin.oidc is None


@pytest.mark.parametrize(
    ("admin", "expected"),
    [
        ({"principals": [{"name": "a", "role": "viewer"}]}, "admin.principals[0].token: give exactly one of"),
        (
            {"principals": [{"name": "a", "role": "viewer", "token": "short"}]},
            "admin.principals[0].token: must be at least 16",
        ),
        ({"principals": [{"name": "a", "role": "owner", "token": TOKEN}]}, "admin.principals[0].role"),
        (
            {"principals": [{"name": "a", "role": "tenant_admin", "token": TOKEN}]},
            "admin.principals[0].tenants: is required",
        ),
        (
            {"principals": [{"name": "a", "role": "viewer", "token": TOKEN, "tenants": ["acme"]}]},
            "admin.principals[0].tenants: only a tenant_admin",
        ),
        (
            {
                "principals": [
                    {"name": "a", "role": "viewer", "token": TOKEN},
                    {"name": "a", "role": "viewer", "token": TOKEN + "x"},
                ]
            },
            "admin.principals[1].name",
        ),
        (
            {
                "principals": [
                    {"name": "a", "role": "viewer", "token": TOKEN},
                    {"name": "b", "role": "admin", "token": TOKEN},
                ]
            },
            "admin.principals[1].token: the same token as principals[0]",
        ),
        (
            {"principals": [{"name": "admin", "role": "viewer", "token": TOKEN}]},
            "admin.principals[0].name: admin is the principal",
        ),
        (
            {"principals": [{"name": "b", "role": "viewer", "token": ADMIN_TOKEN}]},
            "admin.principals[0].token: the same token as listeners.admin.token",
        ),
        ({"oidc": {"issuer": "https://idp.test/", "audience": "gw"}}, "admin.oidc.jwks_url"),
        (
            {"oidc": {"issuer": "https://idp.test/", "audience": "gw", "jwks_url": "http://idp.test/jwks"}},
            "admin.oidc.jwks_url: must be https",
        ),
        (
            {"oidc": {"issuer": "i", "audience": "gw", "jwks_url": "https://idp.test/jwks", "algorithms": ["HS256"]}},
            "admin.oidc.algorithms[0]",
        ),
        (
            {"oidc": {"issuer": "i", "audience": "gw", "jwks_url": "https://idp.test/jwks", "algorithms": ["none"]}},
            "admin.oidc.algorithms[0]",
        ),
        (
            {
                "oidc": {
                    "issuer": "i",
                    "audience": "gw",
                    "jwks_url": "https://idp.test/jwks",
                    "roles_map": {"g": "root"},
                }
            },
            "admin.oidc.roles_map.g",
        ),
        (
            {"oidc": {"issuer": "i", "audience": "gw", "jwks_url": "https://idp.test/jwks", "leeway": "10m"}},
            "admin.oidc.leeway",
        ),
    ],
)
def test_every_problem_of_the_admin_section_names_its_field(admin: dict[str, Any], expected: str) -> None:
    problems = _problems(admin)
    assert any(p.startswith(expected) for p in problems), problems
