"""identity:, plans:, tenants: and registry: sections: what they accept, and every problem named with its field path."""

from __future__ import annotations

import pytest

from tollgate.config import ConfigError, config_from_dict
from tollgate.config.identity import hash_key

from .conftest import ACME_KEY, identity_doc, sha256_hex


def _problems(doc: dict, env: dict[str, str] | None = None) -> list[str]:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as exc:
        config_from_dict(doc, env=env or {})
    return exc.value.problems


def test_the_tier_table_is_built_in_and_operators_add_or_replace_plans() -> None:
    config = config_from_dict(
        identity_doc(
            plans={
                "startup": {"monthly_requests": 50_000, "concurrency": 5, "tokens_per_minute": 20_000},
                "personal": {"monthly_requests": 20_000, "concurrency": 4},
            }
        ),
        env={},
    )
    table = {name: (p.limits.monthly_requests, p.limits.concurrency) for name, p in config.plans.items()}
    assert table["small_business"] == (100_000, 10)
    assert table["enterprise"] == (1_000_000, 50)
    assert table["government"] == (5_000_000, 100)
    assert table["education"] == (500_000, 20)
    assert table["personal"] == (20_000, 4)
    assert config.plans["startup"].limits.tokens_per_minute == 20_000


def test_tenant_problems_are_reported_with_their_paths() -> None:
    doc = identity_doc(
        tenants={
            "Bad_ID": {"plan": "personal"},
            "acme": {
                "plan": "platinum",
                "subdomain": "shared",
                "allowed_models": ["gpt-9"],
                "status": "paused",
                "limits": {"concurrency": -1},
            },
            "globex": {"plan": "personal", "subdomain": "shared", "colour": "blue"},
        }
    )
    problems = _problems(doc)
    for expected in (
        "tenants.Bad_ID: invalid name",
        "tenants.acme.plan: unknown plan 'platinum'",
        "tenants.acme.allowed_models[0]: unknown model 'gpt-9'",
        "tenants.acme.status: must be one of active, suspended",
        "tenants.acme.limits.concurrency: must be >= 0",
        "tenants.globex.subdomain: 'shared' is already the subdomain of tenant 'acme'",
        "tenants.globex.colour: unknown key",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_key_declarations_are_checked_for_shape_duplicates_and_hash_kind() -> None:
    doc = identity_doc(
        identity={"key_secret": "${KEY_SECRET}"},
        tenants={
            "acme": {
                "plan": "personal",
                "keys": [
                    {"id": "a", "sha256": sha256_hex(ACME_KEY)},
                    {"id": "a", "key": "tg_another-key-long-enough"},
                    {"id": "b"},
                    {"id": "c", "key": "short"},
                    {"id": "d", "key": "tg_yet-another-key-long-enough", "models": ["gpt-9"]},
                ],
            }
        },
    )
    problems = _problems(doc, env={"KEY_SECRET": "s" * 40})
    for expected in (
        "tenants.acme.keys[0].sha256: identity.key_secret is set",
        "tenants.acme.keys[1].id: key id 'a' is already used",
        "tenants.acme.keys[2]: give exactly one of key, sha256, hmac_sha256",
        "tenants.acme.keys[3].key: must be at least 16 characters",
        "tenants.acme.keys[4].models[0]: unknown model 'gpt-9'",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_plaintext_keys_from_the_environment_are_stored_as_hmac_when_a_secret_is_set() -> None:
    secret = "k" * 40
    doc = identity_doc(
        identity={"key_secret": "${KEY_SECRET}"},
        tenants={"acme": {"plan": "personal", "keys": [{"id": "k1", "key": "${ACME_KEY}"}]}},
    )
    config = config_from_dict(doc, env={"KEY_SECRET": secret, "ACME_KEY": ACME_KEY})
    assert config.api_keys["k1"].key_hash == hash_key(ACME_KEY, secret.encode())
    assert config.api_keys["k1"].key_hash.startswith("hmac-sha256:")
    assert ACME_KEY not in repr(config)


def test_identity_chain_registry_and_proxy_problems_are_reported() -> None:
    doc = identity_doc(
        identity={
            "chain": ["api_key", "cookie", "subdomain", "jwt"],
            "key_secret": "short",
            "header": {"name": "Authorization"},
        },
        registry={"file": "/tmp/x.json", "redis": "http://nope", "poll_interval": "5s"},
    )
    doc["listeners"]["public"]["trusted_proxies"] = ["10.0.0.0/8", "not-a-network"]
    problems = _problems(doc)
    for expected in (
        "identity.chain[1]: unknown identifier 'cookie'",
        "identity.key_secret: must be at least 32 characters",
        "identity.jwt: is required when the chain includes jwt",
        "identity.subdomain.base_domains: at least one base domain is required",
        "identity.header.name: 'authorization' cannot carry a tenant claim",
        "registry.redis: give file or redis, not both",
        "registry.redis: must be a redis://",
        "registry.poll_interval: must be at most 1s",
        "listeners.public.trusted_proxies[1]: 'not-a-network' is not an IP address or CIDR network",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_plan_problems_are_reported_with_their_paths() -> None:
    problems = _problems(
        identity_doc(
            plans={
                "Gold": {"monthly_requests": 1, "concurrency": 1},
                "silver": {"concurrency": 2, "allowed_models": ["gpt-9"]},
            }
        )
    )
    for expected in (
        "plans.Gold: invalid name",
        "plans.silver.monthly_requests: is required",
        "plans.silver.allowed_models[0]: unknown model 'gpt-9'",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_end_users_come_from_the_jwt_claim_alone_unless_configured() -> None:
    default = config_from_dict(identity_doc(), env={}).identity.end_user
    assert (default.sources, default.header, default.max_length) == (("jwt",), "x-tollgate-end-user", 256)
    doc = identity_doc(identity={"end_user": {"from": ["body", "header"], "header": "X-App-User", "max_length": 64}})
    configured = config_from_dict(doc, env={}).identity.end_user
    assert (configured.sources, configured.header, configured.max_length) == (("body", "header"), "x-app-user", 64)


@pytest.mark.parametrize(
    ("end_user", "problem"),
    [
        (
            {"from": ["body", "cookie"]},
            "identity.end_user.from[1]: unknown end-user source 'cookie' (known: jwt, body, header)",
        ),
        ({"from": ["body", "body"]}, "identity.end_user.from: names a source twice"),
        ({"from": ["body", "jwt"]}, "identity.end_user.from: jwt must come first"),
        ({"from": "body, header"}, "identity.end_user.from[0]: unknown end-user source 'body, header'"),
        (
            {"from": ["header"], "header": "Authorization"},
            "identity.end_user.header: 'authorization' cannot carry an end user",
        ),
        (
            {"from": ["header"], "header": "X-Tenant-ID"},
            "identity.end_user.header: 'x-tenant-id' is identity.header.name",
        ),
        ({"from": ["header"], "header": "bad header"}, "identity.end_user.header: 'bad header' does not match"),
        ({"from": ["body"], "header": "x-user"}, "identity.end_user.header: is set but from does not list header"),
        ({"max_length": 0}, "identity.end_user.max_length: must be >= 1"),
        ({"max_length": 5000}, "identity.end_user.max_length: must be <= 1024"),
        ({"from": ["body"], "normalise": True}, "identity.end_user.normalise: unknown key"),
    ],
)
def test_end_user_problems_are_reported_with_their_field_paths(end_user: dict, problem: str) -> None:  # type: ignore[type-arg]
    problems = _problems(identity_doc(identity={"end_user": end_user}))
    assert any(p.startswith(problem) for p in problems), problems
