"""A suspended tenant's refused requests are audited as that tenant's, with the key, once per tenant and key per window."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from tollgate.accounting.audit import AuditLog, SecurityWatch
from tollgate.config.accounting import AuditConfig

from ..support.processes import Proc
from .conftest import SLEEPY_KEY, Admin, accounting_doc, gateway, post_chat, sha256_hex, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

DORMANT_KEYS = {
    "dormant-a": "tg_acct-dormant-a-0123456789abcdefghijklm",
    "dormant-b": "tg_acct-dormant-b-0123456789abcdefghijklm",
}


def _refused(tenant: str, key_id: str | None, wall: float, request_id: str = "req_1") -> Any:
    """What the security watch reads of a request refused because its tenant is suspended."""
    return SimpleNamespace(
        status=403,
        error="tenant_suspended",
        tenant=tenant,
        key_id=key_id,
        wall=wall,
        client_ip="10.0.0.7",
        request_id=request_id,
    )


def test_one_event_per_tenant_and_key_per_window() -> None:
    audit = AuditLog(AuditConfig(auth_failure_window=60.0))
    watch = SecurityWatch(audit.config, audit)
    for i, (tenant, key) in enumerate([("sleepy", "k1"), ("sleepy", "k1"), ("sleepy", "k2"), ("dormant", "k3")]):
        watch.observe(_refused(tenant, key, 1000.0 + i, f"req_{i}"))
    watch.observe(_refused("sleepy", "k1", 1061.0, "req_late"))  # the window is over: announced again
    events = audit._pending
    assert [(e["tenant"], e["target"], e["detail"]["key_id"]) for e in events] == [
        ("sleepy", "key:k1", "k1"),
        ("sleepy", "key:k2", "k2"),
        ("dormant", "key:k3", "k3"),
        ("sleepy", "key:k1", "k1"),
    ]
    assert events[-1]["detail"]["request_id"] == "req_late"
    assert {e["kind"] for e in events} == {"suspended_tenant_access"}


async def test_a_suspended_tenants_refusals_are_in_its_audit_view_with_the_key(mock: Proc, tmp_path: Path) -> None:
    doc = accounting_doc(
        f"{mock.url}/v1",
        usage={"flush_interval": "100ms"},
        audit={"path": str(tmp_path / "audit.jsonl"), "auth_failure_window": "1m"},
    )
    doc["tenants"]["dormant"] = {
        "plan": "personal",
        "status": "suspended",
        "keys": [{"id": kid, "sha256": sha256_hex(key)} for kid, key in DORMANT_KEYS.items()],
    }
    with gateway(doc) as proc:
        admin = Admin(proc)
        async with aiohttp.ClientSession() as s:
            for key in (SLEEPY_KEY, SLEEPY_KEY, SLEEPY_KEY, DORMANT_KEYS["dormant-a"], DORMANT_KEYS["dormant-b"]):
                status, body = await post_chat(s, proc, key)
                assert status == 403 and body["error"]["code"] == "tenant_suspended", body

        async def events_of(tenant: str, n: int) -> list[dict[str, Any]] | None:
            got = [
                e
                for e in (await admin.get(f"/admin/tenants/{tenant}/audit"))["events"]
                if e["kind"] == "suspended_tenant_access"
            ]
            return got if len(got) >= n else None

        sleepy = await wait_until(lambda: events_of("sleepy", 1), timeout=10)
        dormant = await wait_until(lambda: events_of("dormant", 2), timeout=10)
        assert sleepy and dormant, (sleepy, dormant)
        everything = (await admin.get("/admin/audit"))["events"]
    assert len(sleepy) == 1  # three refusals of one key within the window: one event
    event = sleepy[0]
    assert event["tenant"] == "sleepy" and event["target"] == "key:sleepy-main" and event["actor"] == "gateway"
    assert event["detail"]["key_id"] == "sleepy-main" and event["detail"]["request_id"].startswith("req_")
    assert sorted(e["detail"]["key_id"] for e in dormant) == ["dormant-a", "dormant-b"]  # per key, not merged
    suspended = [e for e in everything if e["kind"] == "suspended_tenant_access"]
    assert len(suspended) == 3 and all(e["tenant"] != "anonymous" for e in suspended)
