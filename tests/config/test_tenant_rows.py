"""Plain tenants of a file are kept as rows, and reading them gives the records the models make, in the file's order."""

from __future__ import annotations

import hashlib
from typing import Any

from tollgate.config import config_from_dict
from tollgate.config.document import ConfigDoc, build_config
from tollgate.config.identity import ApiKey, Tenant
from tollgate.config.tenant_rows import KeyRows, TenantRows
from tollgate.config.validation import Problems, validate


def _digest(i: int) -> str:
    return hashlib.sha256(f"tg_rows-key-{i:04d}-0123456789".encode()).hexdigest()


def _doc(tenants: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m1": {"deployments": [{"upstream": "u"}]}},
        "plans": {"bench": {"monthly_requests": 10, "concurrency": 1}},
        "tenants": tenants,
        **extra,
    }


def _through_the_models(data: dict[str, Any]) -> tuple[dict[str, Tenant], dict[str, ApiKey]]:
    problems = Problems()
    doc = validate(ConfigDoc, data, "", problems)
    assert doc is not None and not problems, problems.lines
    config = build_config(doc)
    return dict(config.tenants), dict(config.api_keys)


MIXED: dict[str, Any] = {
    "t0": {"plan": "bench", "keys": [{"id": "k0", "sha256": _digest(0)}]},  # a row
    "t1": {"plan": "bench", "name": "Named", "keys": [{"id": "k1", "sha256": _digest(1)}]},  # a name of its own
    "t2": {"plan": "bench", "name": "t2", "status": "active", "keys": [{"sha256": _digest(2)}]},  # defaults written out
    "t3": {"plan": "bench", "keys": [{"id": "k3", "sha256": _digest(3), "name": "ci"}]},  # a named key
    "t4": {"plan": "bench", "keys": [{"id": "k4a", "sha256": _digest(4)}, {"id": "k4b", "sha256": _digest(5)}]},
    "t5": {"plan": "bench"},  # no key
    "t6": {"plan": "bench", "keys": [{"id": "k6", "key_hash": "hmac-sha256:" + _digest(6)}]},  # another kind
    "t7": {"plan": "personal", "limits": {}, "metadata": {}, "keys": [{"id": "k7", "key": "tg_a-plaintext-key-7"}]},
}


def test_plain_tenants_are_rows_the_others_records_and_both_read_as_the_models_records() -> None:
    data = _doc(MIXED)
    config = config_from_dict(data)
    tenants, keys = config.tenants, config.api_keys
    assert isinstance(tenants, TenantRows) and isinstance(keys, KeyRows)
    rows = {tid for tid in tenants if tenants.row(tid) is not None}
    assert rows == {"t0", "t2", "t7"}
    assert tenants.row("t0") == ("bench", "k0", bytes.fromhex(_digest(0)))
    assert [k.id for k in keys.records()] == ["k1", "k3", "k4a", "k4b", "k6"]
    expected_tenants, expected_keys = _through_the_models(data)
    assert dict(tenants) == expected_tenants and dict(keys) == expected_keys
    assert list(tenants) == list(expected_tenants) and list(keys) == list(expected_keys)  # the file's order
    assert len(tenants) == 8 and len(keys) == 8 and "t5" in tenants and "k2" not in keys and "t2-0" in keys


def test_a_row_reads_as_a_fresh_record_each_time_equal_to_the_last() -> None:
    config = config_from_dict(_doc(MIXED))
    first, second = config.tenants["t0"], config.tenants["t0"]
    assert first == second == Tenant(id="t0", name="t0", plan="bench")
    assert config.api_keys["k0"] == ApiKey(id="k0", tenant="t0", digest=bytes.fromhex(_digest(0)), hash_kind="sha256")
    assert config.tenants.get("nobody") is None and config.api_keys.get("nokey") is None


def test_with_a_key_secret_a_row_holds_the_hmac_of_a_plaintext_key() -> None:
    secret = "a-key-secret-of-32-characters-xx"
    tenants = {"t0": {"plan": "bench", "keys": [{"id": "k0", "key": "tg_a-plaintext-key-0"}]}}
    config = config_from_dict(_doc(tenants, identity={"key_secret": secret}))
    assert isinstance(config.tenants, TenantRows) and config.tenants.hash_kind == "hmac-sha256"
    assert config.tenants.row("t0") is not None
    assert config.api_keys["k0"].key_hash.startswith("hmac-sha256:")
    assert dict(config.api_keys) == _through_the_models(_doc(tenants, identity={"key_secret": secret}))[1]
