"""Roles on the admin API: every route of the route table, called by each role, is served or refused as declared;
a tenant_admin is held to its own tenants; no or a wrong credential is a 401; writes are audited with the principal."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tollgate.admin.operations import operation_of
from tollgate.admin.routes import OPEN_PATHS, ROUTES

from .conftest import NAMES, TOKENS, AdminFactory, bearer

# Who may call each route: the least role (viewer < operator < admin) and how a tenant_admin may (None: never).
# A route added to the table without a line here fails test_every_route_has_an_expected_role.
EXPECTED: dict[tuple[str, str], tuple[str, str | None]] = {
    ("GET", "/admin/plans"): ("viewer", None),
    ("GET", "/admin/tenants"): ("viewer", "list"),
    ("POST", "/admin/tenants"): ("operator", None),
    ("POST", "/admin/tenants/bulk"): ("operator", None),
    ("GET", "/admin/tenants/{tenant}"): ("viewer", "path"),
    ("PATCH", "/admin/tenants/{tenant}"): ("operator", None),
    ("DELETE", "/admin/tenants/{tenant}"): ("operator", None),
    ("POST", "/admin/tenants/{tenant}/suspend"): ("operator", None),
    ("POST", "/admin/tenants/{tenant}/resume"): ("operator", None),
    ("GET", "/admin/tenants/{tenant}/keys"): ("viewer", "path"),
    ("POST", "/admin/tenants/{tenant}/keys"): ("operator", "path"),
    ("GET", "/admin/keys/{key}"): ("viewer", "key"),
    ("POST", "/admin/keys/{key}/revoke"): ("operator", "key"),
    ("GET", "/admin/namespaces"): ("viewer", None),
    ("POST", "/admin/namespaces"): ("operator", None),
    ("GET", "/admin/namespaces/{name}"): ("viewer", None),
    ("PUT", "/admin/namespaces/{name}"): ("operator", None),
    ("DELETE", "/admin/namespaces/{name}"): ("operator", None),
    ("GET", "/admin/rules"): ("viewer", None),
    ("POST", "/admin/rules"): ("operator", None),
    ("GET", "/admin/rules/{name}"): ("viewer", None),
    ("PUT", "/admin/rules/{name}"): ("operator", None),
    ("PATCH", "/admin/rules/{name}"): ("operator", None),
    ("DELETE", "/admin/rules/{name}"): ("operator", None),
    ("GET", "/admin/rules/{name}/counter"): ("viewer", None),
    ("GET", "/admin/dead-letters"): ("viewer", None),
    ("GET", "/admin/resilience"): ("viewer", None),
    ("GET", "/metrics"): ("viewer", None),
    ("GET", "/admin/tenants/{tenant}/usage"): ("viewer", "path"),
    ("GET", "/admin/tenants/{tenant}/usage.csv"): ("viewer", "path"),
    ("GET", "/admin/tenants/{tenant}/usage/users"): ("viewer", "path"),
    ("GET", "/admin/usage.csv"): ("viewer", None),
    ("GET", "/admin/tenants/{tenant}/quota"): ("viewer", "path"),
    ("GET", "/admin/tenants/{tenant}/audit"): ("viewer", "path"),
    ("GET", "/admin/audit"): ("viewer", "query"),
    ("GET", "/admin/sla"): ("viewer", None),
    ("GET", "/admin/pricing"): ("viewer", None),
    ("GET", "/admin/spend"): ("viewer", "query"),
    ("GET", "/admin/bills/{tenant}"): ("viewer", "path"),
    ("POST", "/admin/sync"): ("operator", None),
    ("GET", "/admin/stats"): ("viewer", None),
    ("GET", "/admin/whoami"): ("viewer", "self"),
    ("GET", "/admin/principals"): ("admin", None),
    ("POST", "/admin/reload"): ("operator", None),
    ("GET", "/admin/scaling"): ("viewer", None),
    ("GET", "/admin/scaling/{pool}/history"): ("viewer", None),
    ("GET", "/api/v1/namespaces"): ("viewer", None),
    ("POST", "/api/v1/namespaces"): ("operator", None),
    ("GET", "/api/v1/namespaces/{namespace_id}"): ("viewer", None),
    ("PUT", "/api/v1/namespaces/{namespace_id}"): ("operator", None),
    ("DELETE", "/api/v1/namespaces/{namespace_id}"): ("operator", None),
    ("GET", "/api/v1/namespaces/{namespace_id}/matchers"): ("viewer", None),
    ("POST", "/api/v1/namespaces/{namespace_id}/matchers"): ("operator", None),
    ("GET", "/api/v1/matchers/{matcher_id}"): ("viewer", None),
    ("PUT", "/api/v1/matchers/{matcher_id}"): ("operator", None),
    ("DELETE", "/api/v1/matchers/{matcher_id}"): ("operator", None),
    ("GET", "/api/v1/namespaces/{namespace_id}/rules"): ("viewer", None),
    ("POST", "/api/v1/namespaces/{namespace_id}/rules"): ("operator", None),
    ("GET", "/api/v1/rules/{rule_id}"): ("viewer", None),
    ("PUT", "/api/v1/rules/{rule_id}"): ("operator", None),
    ("DELETE", "/api/v1/rules/{rule_id}"): ("operator", None),
    ("GET", "/api/v1/counters/{counter_key}"): ("viewer", None),
    ("POST", "/api/v1/counters/{counter_key}/increment"): ("operator", None),
    ("POST", "/api/v1/counters/{counter_key}/reset"): ("operator", None),
    ("GET", "/api/v1/health"): ("viewer", None),
    ("GET", "/api/v1/stats"): ("viewer", None),
    ("POST", "/api/v1/sync"): ("operator", None),
    ("GET", "/admin/cache"): ("viewer", None),
    ("DELETE", "/admin/cache"): ("operator", "query"),
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}
GUARDED = [(m, p) for m, p, _h in ROUTES if p not in OPEN_PATHS]


def _allowed(role: str, method: str, path: str) -> bool:
    least, scope = EXPECTED[(method, path)]
    if role == "tenant_admin":
        return scope is not None
    return RANK[role] >= RANK[least]


def _call(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """A URL of the route within acme (the tenant_admin's tenant), and a body the handler refuses (400) after the
    role check, so that an allowed write changes nothing; routes without a body change only acme, harmlessly."""
    url = path.replace("{tenant}", "acme").replace("{key}", "acme-main").replace("{name}", "no-such-entry")
    url = url.replace("{pool}", "no-such-pool")
    for ident in ("{namespace_id}", "{matcher_id}", "{rule_id}", "{counter_key}"):
        url = url.replace(ident, "999")
    if path in ("/admin/audit", "/admin/spend") or (method, path) == ("DELETE", "/admin/cache"):
        url += "?tenant=acme"
    if (method, path) == ("DELETE", "/admin/tenants/{tenant}"):
        url += "?dry_run=true"
    handler = {(m, p): h for m, p, h in ROUTES}[(method, path)]
    op = operation_of(handler)
    assert op is not None
    return url, {"data": b"{not json", "headers": {"content-type": "application/json"}} if op.body else {}


def test_every_route_has_an_expected_role_and_declares_it() -> None:
    assert set(GUARDED) == set(EXPECTED), "a route was added or removed: give it a line in EXPECTED"
    for method, path, handler in ROUTES:
        op = operation_of(handler)
        assert op is not None
        if path in OPEN_PATHS:
            assert op.open
            continue
        assert (op.role, op.tenant_admin) == EXPECTED[(method, path)], (method, path)


@pytest.mark.parametrize("role", ["viewer", "operator", "admin", "tenant_admin"])
async def test_each_role_is_served_or_refused_with_403_on_every_route_as_declared(
    admin_app: AdminFactory, role: str
) -> None:
    client, _state = await admin_app()
    wrong: list[str] = []
    for method, path in GUARDED:
        url, extra = _call(method, path)
        headers = {**bearer(TOKENS[role]), **extra.pop("headers", {})}
        async with client.request(method, url, headers=headers, **extra) as r:
            body = await r.json() if r.content_type == "application/json" else None
            if _allowed(role, method, path):
                if r.status in (401, 403):
                    wrong.append(f"{method} {url}: {r.status}, expected served")
            elif r.status != 403 or body is None or body["error"]["code"] != "admin_forbidden":
                wrong.append(f"{method} {url}: {r.status} {body}, expected 403")
            elif NAMES[role] not in body["error"]["message"]:
                wrong.append(f"{method} {url}: the refusal does not name the principal: {body}")
    assert not wrong, "\n".join(wrong)


async def test_no_credential_or_a_wrong_one_is_401_on_every_guarded_route_in_the_error_shape(
    admin_app: AdminFactory,
) -> None:
    client, _state = await admin_app()
    for method, path in GUARDED:
        url, _extra = _call(method, path)
        for headers in ({}, bearer("not-a-token-of-anyone-0123456789"), {"Authorization": f"Basic {TOKENS['admin']}"}):
            async with client.request(method, url, headers=headers) as r:
                assert r.status == 401, (method, url, headers)
                error = (await r.json())["error"]
                assert error["type"] == "invalid_request_error" and error["code"] == "invalid_admin_token"


async def test_a_tenant_admin_sees_and_manages_only_its_own_tenants(admin_app: AdminFactory) -> None:
    client, _state = await admin_app()
    acme = bearer(TOKENS["tenant_admin"])
    async with client.get("/admin/tenants", headers=acme) as r:
        assert r.status == 200 and [t["id"] for t in (await r.json())["data"]] == ["acme"]
    async with client.get("/admin/tenants", headers=bearer(TOKENS["viewer"])) as r:
        assert len((await r.json())["data"]) > 1  # the filter is the tenant_admin's only
    async with client.post("/admin/tenants/acme/keys", json={"name": "ci"}, headers=acme) as r:
        assert r.status == 201, await r.text()
        created = (await r.json())["id"]
    async with client.post(f"/admin/keys/{created}/revoke", headers=acme) as r:
        assert r.status == 200, await r.text()
    for method, url in (
        ("GET", "/admin/tenants/globex"),
        ("GET", "/admin/tenants/globex/keys"),
        ("POST", "/admin/tenants/globex/keys"),
        ("GET", "/admin/keys/globex-main"),
        ("POST", "/admin/keys/globex-main/revoke"),
        ("GET", "/admin/keys/no-such-key"),  # unknown is refused alike: no way to probe another tenant's ids
        ("GET", "/admin/tenants/globex/usage"),
        ("GET", "/admin/audit?tenant=globex"),
        ("GET", "/admin/audit"),  # every tenant's audit: refused, tenant= is required
        ("GET", "/admin/spend"),
        ("PATCH", "/admin/tenants/acme"),  # its own tenant's plan and limits are the operator's
    ):
        async with client.request(method, url, json={"name": "x"}, headers=acme) as r:
            assert r.status == 403, (method, url, await r.text())
    async with client.get("/admin/whoami", headers=acme) as r:
        assert await r.json() == {"name": "acme-admin", "role": "tenant_admin", "tenants": ["acme"], "via": "token"}


async def test_the_listener_token_alone_still_works_as_the_principal_admin(admin_app: AdminFactory) -> None:
    client, _state = await admin_app(admin={})
    async with client.get("/admin/whoami", headers=bearer(TOKENS["admin"])) as r:
        assert await r.json() == {"name": "admin", "role": "admin", "tenants": None, "via": "token"}
    async with client.get("/admin/principals", headers=bearer(TOKENS["admin"])) as r:
        assert (await r.json())["data"] == [{"name": "admin", "role": "admin", "tenants": None, "via": "token"}]
    async with client.get("/admin/whoami", headers=bearer(TOKENS["viewer"])) as r:
        assert r.status == 401


async def test_writes_are_audited_with_the_principals_name_and_role_refused_ones_too(admin_app: AdminFactory) -> None:
    client, state = await admin_app()
    async with client.patch(
        "/admin/tenants/globex", json={"limits": {"concurrency": 3}}, headers=bearer(TOKENS["operator"])
    ) as r:
        assert r.status == 200, await r.text()
    async with client.post("/admin/tenants/globex/suspend", headers=bearer(TOKENS["viewer"])) as r:
        assert r.status == 403
    await state.accounting.audit.flush()
    async with client.get("/admin/tenants/globex/audit", headers=bearer(TOKENS["admin"])) as r:
        events = [e for e in (await r.json())["events"] if e["kind"] == "admin_change"]
    by_method = {e["detail"]["method"]: e for e in events}
    patch, refused = by_method["PATCH"], by_method["POST"]
    assert patch["actor"] == "ops-bot" and patch["detail"]["role"] == "operator" and patch["detail"]["status"] == 200
    assert patch["detail"]["via"] == "token"
    assert refused["actor"] == "dash" and refused["detail"]["role"] == "viewer" and refused["detail"]["status"] == 403


async def test_a_reload_changes_the_principals_without_a_restart(admin_app: AdminFactory) -> None:
    client, state = await admin_app()
    assert state.config_path is not None
    doc = yaml.safe_load(state.config_path.read_text())
    doc["admin"]["principals"] = [{"name": "new-ops", "role": "operator", "token": "a-new-operator-token-0123456789"}]
    state.config_path.write_text(yaml.safe_dump(doc))
    async with client.post("/admin/reload", headers=bearer(TOKENS["operator"])) as r:
        assert r.status == 200, await r.text()
    async with client.get("/admin/whoami", headers=bearer("a-new-operator-token-0123456789")) as r:
        assert (await r.json())["name"] == "new-ops"
    async with client.get("/admin/whoami", headers=bearer(TOKENS["operator"])) as r:
        assert r.status == 401  # removed by the reload
