"""Tenants read without a model per tenant are the records the models make; anything else goes through the models."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tollgate.config import ConfigError, config_from_dict
from tollgate.config.document import ConfigDoc, build_config
from tollgate.config.identity import DEFAULT_PLANS
from tollgate.config.tenant_table import read_tenants
from tollgate.config.validation import Problems, validate

DIGEST = hashlib.sha256(b"tg_some-key-0123456789").hexdigest()


def _doc(tenants: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m1": {"deployments": [{"upstream": "u"}]}, "m2": {"deployments": [{"upstream": "u"}]}},
        "plans": {"bench": {"monthly_requests": 10, "concurrency": 1, "allowed_models": ["m1"]}},
        "tenants": tenants,
        **extra,
    }


def _through_the_models(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    problems = Problems()
    doc = validate(ConfigDoc, data, "", problems)
    assert doc is not None and not problems, problems.lines
    config = build_config(doc)
    return dict(config.tenants), dict(config.api_keys)


PLAIN_SHAPES: list[dict[str, Any]] = [
    {"t1": {"plan": "bench", "keys": [{"id": "k1", "sha256": DIGEST}]}},
    {"t1": {"plan": "personal", "name": "Acme", "status": "suspended", "subdomain": "acme"}},
    {"t1": {"plan": "bench", "allowed_models": ["m2", "m1", "m2"], "keys": [{"key": "tg_a-plaintext-key-123"}]}},
    {"t1": {"plan": "bench", "limits": {"concurrency": 3, "monthly_requests": 0}, "metadata": {"team": "x", "n": 1}}},
    {"t1": {"plan": "bench", "limits": {}, "metadata": {}, "keys": []}},
    {
        "t1": {
            "plan": "bench",
            "keys": [
                {"id": "k1", "key_hash": "sha256:" + DIGEST, "name": "ci", "revoked": True, "admin": True},
                {"sha256": "0" * 64, "models": ["m1"]},
            ],
        },
        "t2": {"plan": "bench", "keys": [{"sha256": "1" * 64}]},
    },
]


@pytest.mark.parametrize("tenants", PLAIN_SHAPES)
def test_the_plain_shape_gives_the_records_of_the_models(tenants: dict[str, Any]) -> None:
    data = _doc(tenants)
    expected = _through_the_models(data)
    models = {"m1": None, "m2": None}
    got = read_tenants(tenants, secret=None, plans={**DEFAULT_PLANS, "bench": None}, models=models)
    assert got is not None
    assert got == expected
    assert [list(x) for x in got] == [list(x) for x in expected]  # the same order
    config = config_from_dict(data)  # the loader takes the fast path and builds the same Config
    assert dict(config.tenants) == expected[0] and dict(config.api_keys) == expected[1]


IRREGULAR: list[dict[str, Any]] = [
    {"t1": {"plan": "bench", "created": 5}},  # a field the fast path leaves to the models
    {"t1": {"plan": "bench", "keys": [{"sha256": DIGEST, "expires": "2030-01-01T00:00:00Z"}]}},
    {"t1": {"plan": "bench", "allowed_models": "m1"}},  # a single string stands for a list of one
    {"t1": {"plan": "bench", "name": None}},
]


@pytest.mark.parametrize("tenants", IRREGULAR)
def test_other_valid_shapes_go_through_the_models_to_the_same_config(tenants: dict[str, Any]) -> None:
    assert read_tenants(tenants, secret=None, plans={**DEFAULT_PLANS, "bench": None}, models={"m1": None}) is None
    config = config_from_dict(_doc(tenants))
    assert dict(config.tenants) == _through_the_models(_doc(tenants))[0]


@pytest.mark.parametrize(
    ("tenants", "problem"),
    [
        ({"t1": {"plan": "nope"}}, "tenants.t1.plan: unknown plan 'nope'"),
        ({"t1": {"plan": "bench", "allowed_models": ["m9"]}}, "tenants.t1.allowed_models[0]: unknown model 'm9'"),
        (
            {
                "t1": {"plan": "bench", "keys": [{"id": "k", "sha256": DIGEST}]},
                "t2": {"plan": "bench", "keys": [{"id": "k", "sha256": "0" * 64}]},
            },
            "tenants.t2.keys[0].id: key id 'k' is already used at tenants.t1.keys[0]",
        ),
        (
            {"t1": {"plan": "bench", "keys": [{"sha256": DIGEST}, {"sha256": DIGEST}]}},
            "tenants.t1.keys[1]: the same key is declared at tenants.t1.keys[0]",
        ),
        (
            {"t1": {"plan": "bench", "subdomain": "a"}, "t2": {"plan": "bench", "subdomain": "a"}},
            "tenants.t2.subdomain",
        ),
        ({"t1": {"plan": "bench", "keys": [{"key": "short"}]}}, "tenants.t1.keys[0].key: must be at least 16"),
        ({"t1": {"plan": "bench", "status": "gone"}}, "tenants.t1.status"),
        ({"T1": {"plan": "bench"}}, "tenants.T1"),
        ({"t1": {"plan": "bench", "keys": [{"hmac_sha256": DIGEST}]}}, "tenants.t1.keys[0].hmac_sha256: needs"),
    ],
)
def test_a_problem_is_reported_by_the_models_with_its_path(tenants: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict(_doc(tenants))
    assert any(line.startswith(problem) for line in raised.value.problems), raised.value.problems


def test_a_key_secret_makes_keys_hmac_hashed_and_refuses_sha256_digests() -> None:
    tenants = {"t1": {"plan": "bench", "keys": [{"key": "tg_a-plaintext-key-123"}, {"hmac_sha256": DIGEST}]}}
    data = _doc(tenants, identity={"key_secret": "s" * 32})
    config = config_from_dict(data)
    assert dict(config.api_keys) == _through_the_models(data)[1]
    assert config.api_keys["t1-0"].key_hash.startswith("hmac-sha256:")
    with pytest.raises(ConfigError):
        config_from_dict(
            _doc({"t1": {"plan": "bench", "keys": [{"sha256": DIGEST}]}}, identity={"key_secret": "s" * 32})
        )
