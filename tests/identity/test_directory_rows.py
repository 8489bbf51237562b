"""The directory over tenants kept as rows: the same identification, entries, changes and views as over records."""

from __future__ import annotations

import gc
import hashlib
import weakref
from typing import Any

from tollgate.config import config_from_dict
from tollgate.config.identity import ApiKey, Tenant
from tollgate.config.model import Config
from tollgate.config.tenant_rows import TenantRows
from tollgate.identity import Directory, IdentityRuntime, authenticate

from .helpers import mocked_request


def _key(i: int) -> str:
    return f"tg_rows_tenant_{i:04d}_key_0123456789abcdef"


def _digest(i: int) -> bytes:
    return hashlib.sha256(_key(i).encode()).digest()


def _config(count: int = 20, **tenants: Any) -> Config:
    table: dict[str, Any] = {
        f"t{i}": {"plan": "bench", "keys": [{"id": f"k{i}", "sha256": _digest(i).hex()}]} for i in range(count)
    }
    table.update(tenants)
    return config_from_dict(
        {
            "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {"m1": {"deployments": [{"upstream": "u"}]}, "m2": {"deployments": [{"upstream": "u"}]}},
            "identity": {"chain": ["api_key"]},
            "plans": {"bench": {"monthly_requests": 10, "concurrency": 1, "allowed_models": ["m1"]}},
            "tenants": table,
        },
        env={},
    )


def _tenant_of(config: Config, directory: Directory, key: str) -> str:
    request = mocked_request({"Authorization": f"Bearer {key}"})
    return authenticate(request, IdentityRuntime(config), directory).tenant


def test_a_row_key_identifies_its_tenant_with_the_plan_terms_and_reads_as_its_record() -> None:
    config = _config()
    assert isinstance(config.tenants, TenantRows)
    directory = Directory(config)
    assert _tenant_of(config, directory, _key(7)) == "t7"
    entry = directory.keys[_digest(7)]
    assert entry.principal is not None
    assert (entry.principal.plan, entry.principal.key_id, entry.principal.via) == ("bench", "k7", "api_key")
    assert entry.principal.allowed_models == frozenset({"m1"})
    assert entry.principal.limits is config.plans["bench"].limits
    assert entry.key == ApiKey(id="k7", tenant="t7", digest=_digest(7), hash_kind="sha256")
    assert entry.key is entry.key  # made once, then kept
    assert directory.key_ids["k7"] is entry and [e.key.id for e in directory.keys_of("t7")] == ["k7"]


def test_a_tenant_entry_is_made_when_first_read_then_kept() -> None:
    config = _config()
    directory = Directory(config)
    assert len(directory.tenants) == 20 and "t3" in directory.tenants and "t99" not in directory.tenants
    entry = directory.tenants["t3"]
    assert entry is directory.tenants.get("t3")
    assert entry.tenant == Tenant(id="t3", name="t3", plan="bench") and entry.source == "config"
    assert entry.principal is not None and entry.principal is entry.principal
    assert (entry.principal.tenant, entry.principal.key_id, entry.principal.via) == ("t3", None, "claim")
    assert directory.tenants.get("t99") is None and directory.tenants.get("t99", entry) is entry
    assert list(directory.tenant_ids()) == [f"t{i}" for i in range(20)]


def test_records_beside_rows_keep_their_own_shape() -> None:
    config = _config(
        5,
        acme={"plan": "bench", "subdomain": "acme", "keys": [{"id": "ka", "sha256": _digest(50).hex(), "name": "ci"}]},
        globex={"plan": "bench", "status": "suspended", "keys": [{"id": "kg", "sha256": _digest(51).hex()}]},
    )
    assert isinstance(config.tenants, TenantRows) and config.tenants.row("acme") is None
    directory = Directory(config)
    assert directory.subdomains == {"acme": "acme"}
    assert _tenant_of(config, directory, _key(50)) == "acme"
    assert directory.key_ids["ka"].key.name == "ci"
    refused = directory.keys[_digest(51)].refusal
    assert refused is not None and refused.code == "tenant_suspended"


def test_registry_records_change_row_tenants_as_they_change_records() -> None:
    config = _config()
    directory = Directory(config, {"r:k3": {"revoked_at": 1.0}})
    revoked = directory.keys[_digest(3)]
    assert revoked.refusal is not None and revoked.refusal.code == "invalid_api_key" and revoked.key.revoked
    # A runtime tenant record over a row tenant, and a runtime key beside the row's key.
    directory.apply({"t:t4": {"plan": "bench", "status": "suspended"}})
    entry = directory.tenants["t4"]
    assert entry.source == "config+api" and entry.tenant.status == "suspended"
    suspended = directory.keys[_digest(4)].refusal
    assert suspended is not None and suspended.code == "tenant_suspended"
    key_hash = "sha256:" + _digest(60).hex()
    directory.apply({"k:extra": {"tenant": "t5", "key_hash": key_hash}})
    assert [e.key.id for e in directory.keys_of("t5")] == ["extra", "k5"]
    assert _tenant_of(config, directory, _key(60)) == "t5" and _tenant_of(config, directory, _key(5)) == "t5"
    directory.apply({"k:extra": None, "t:t4": None})
    assert [e.key.id for e in directory.keys_of("t5")] == ["k5"] and _digest(60) not in directory.keys
    assert directory.tenants["t4"].source == "config" and directory.keys[_digest(4)].refusal is None
    # A tenant only the registry knows, then gone.
    directory.apply({"t:newco": {"plan": "bench"}})
    assert len(directory.tenants) == 21 and list(directory.tenant_ids())[-1] == "newco"
    directory.apply({"t:newco": None})
    assert len(directory.tenants) == 20 and "newco" not in directory.tenants


def test_a_dropped_directory_is_freed_at_once_without_the_cyclic_collector() -> None:
    config = _config()
    directory = Directory(config, {"t:t1": {"plan": "bench", "status": "suspended"}})
    assert directory.tenants["t2"].principal is not None and directory.key_ids["k3"].key.id == "k3"
    dropped = weakref.ref(directory)
    enabled = gc.isenabled()
    gc.disable()  # a reload drops the old directory while the collector is frozen out of the started heap
    try:
        del directory
        assert dropped() is None
    finally:
        if enabled:
            gc.enable()
