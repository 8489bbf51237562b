"""The admin API of a real gateway process: its token, tenants and keys at runtime, validation, the OpenAPI document."""

from __future__ import annotations

import time
from collections.abc import Iterator

import aiohttp
import pytest

from tollgate.admin.openapi import openapi_document
from tollgate.admin.routes import ROUTES

from ..support.processes import Proc, gateway_process
from .admin_client import admin, admin_listener, public_status
from .conftest import ACME_KEY, GLOBEX_KEY, identity_doc

pytestmark = [pytest.mark.process, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    registry = tmp_path_factory.mktemp("admin") / "registry.json"
    doc = identity_doc(listeners=admin_listener(), registry={"file": str(registry)})
    with gateway_process(doc) as proc:
        yield proc


async def test_admin_without_a_configured_token_refuses_every_call_and_says_how_to_configure_one() -> None:
    doc = identity_doc(listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True}})
    with gateway_process(doc) as proc:
        status, body = await admin(proc, "GET", "/admin/tenants")
        assert status == 401 and "listeners.admin.token" in body["error"]["message"]
        status, _ = await admin(proc, "POST", "/admin/tenants", {"id": "x", "plan": "personal"}, token=None)
        assert status == 401


async def test_admin_refuses_a_tenant_api_key_a_wrong_token_and_no_token(gateway: Proc) -> None:
    for token in (ACME_KEY, GLOBEX_KEY, "admin-token-for-identity-tests-012345678", "", None):
        status, body = await admin(gateway, "GET", "/admin/tenants", token=token)
        assert status == 401, (token, body)
        status, _ = await admin(gateway, "POST", "/admin/keys/acme-main/revoke", token=token)
        assert status == 401


async def test_tenant_lifecycle_create_with_key_patch_suspend_resume_delete(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        status, body = await admin(
            gateway,
            "POST",
            "/admin/tenants",
            {
                "id": "initech",
                "name": "Initech",
                "plan": "small_business",
                "metadata": {"crm": "A-17"},
                "keys": [{"name": "ci"}],
            },
            session=s,
        )
        assert status == 201, body
        key = body["created_keys"][0]["key"]
        assert key.startswith("tg_") and len(key) >= 40 and body["source"] == "api"
        assert await public_status(gateway, key, s) == 200
        # the key is never shown again
        status, listed = await admin(gateway, "GET", "/admin/tenants/initech/keys", session=s)
        assert status == 200 and key not in str(listed) and listed["data"][0]["name"] == "ci"

        status, body = await admin(
            gateway, "PATCH", "/admin/tenants/initech", {"plan": "enterprise", "limits": {"concurrency": 7}}, session=s
        )
        assert status == 200 and body["plan"] == "enterprise" and body["limits"] == {"concurrency": 7}

        status, body = await admin(gateway, "POST", "/admin/tenants/initech/suspend", session=s)
        assert status == 200 and body["status"] == "suspended"
        assert await public_status(gateway, key, s) == 403
        await admin(gateway, "POST", "/admin/tenants/initech/resume", session=s)
        assert await public_status(gateway, key, s) == 200

        status, report = await admin(gateway, "DELETE", "/admin/tenants/initech?dry_run=true", session=s)
        assert status == 200 and report["dry_run"] is True and len(report["keys"]) == 1 and "store" in report
        assert await public_status(gateway, key, s) == 200  # a dry run removes nothing
        status, report = await admin(gateway, "DELETE", "/admin/tenants/initech", session=s)
        assert status == 200 and report["dry_run"] is False
        assert await public_status(gateway, key, s) == 401
        status, _ = await admin(gateway, "GET", "/admin/tenants/initech", session=s)
        assert status == 404


async def test_keys_create_list_and_revoke_including_a_config_declared_key(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        status, created = await admin(
            gateway,
            "POST",
            "/admin/tenants/globex/keys",
            {"name": "batch", "models": ["gpt-4o-mini"], "expires": "2099-01-01T00:00:00Z"},
            session=s,
        )
        assert status == 201 and created["tenant"] == "globex" and created["models"] == ["gpt-4o-mini"]
        assert await public_status(gateway, created["key"], s) == 200
        status, revoked = await admin(gateway, "POST", f"/admin/keys/{created['id']}/revoke", session=s)
        assert status == 200 and revoked["revoked"] is True
        assert await public_status(gateway, created["key"], s) == 401

        assert await public_status(gateway, GLOBEX_KEY, s) == 200
        status, revoked = await admin(gateway, "POST", "/admin/keys/globex-main/revoke", session=s)
        assert status == 200 and revoked["revoked"] is True and revoked["source"] == "config"
        assert await public_status(gateway, GLOBEX_KEY, s) == 401


async def test_bulk_create_of_1000_tenants_takes_under_a_second_and_each_is_usable(gateway: Proc) -> None:
    tenants = [{"id": f"bulk-{i:04d}", "plan": "personal", "keys": [{"name": "default"}]} for i in range(1000)]
    async with aiohttp.ClientSession() as s:
        started = time.perf_counter()
        status, body = await admin(gateway, "POST", "/admin/tenants/bulk", {"tenants": tenants}, session=s)
        elapsed = time.perf_counter() - started
        assert status == 201 and body["created"] == 1000, body
        print(f"bulk create of 1000 tenants with a key each: {elapsed * 1000:.0f} ms")
        assert elapsed < 1.0, f"bulk create of 1000 tenants took {elapsed:.3f}s"
        keys = {k["tenant"]: k["key"] for k in body["created_keys"]}
        for tid in ("bulk-0000", "bulk-0500", "bulk-0999"):
            assert await public_status(gateway, keys[tid], s) == 200
        status, page = await admin(gateway, "GET", "/admin/tenants?limit=10&after=bulk-0990", session=s)
        assert [t["id"] for t in page["data"]][:3] == ["bulk-0991", "bulk-0992", "bulk-0993"]


async def test_bulk_create_is_all_or_nothing_with_every_problem_named(gateway: Proc) -> None:
    tenants = [
        {"id": "fine-1", "plan": "personal"},
        {"id": "Not Valid", "plan": "personal"},
        {"id": "fine-2", "plan": "platinum"},
        {"id": "fine-1", "plan": "personal"},
    ]
    status, body = await admin(gateway, "POST", "/admin/tenants/bulk", {"tenants": tenants})
    assert status == 400
    message = body["error"]["message"]
    for expected in (
        "tenants[1].id",
        "tenants[2].plan: unknown plan 'platinum'",
        "tenants[3].id: tenant 'fine-1' appears twice",
    ):
        assert expected in message
    status, _ = await admin(gateway, "GET", "/admin/tenants/fine-1")
    assert status == 404


async def test_invalid_admin_input_gets_clear_4xx_errors(gateway: Proc) -> None:
    cases = [
        ("POST", "/admin/tenants", {"id": "acme", "plan": "personal"}, 409, "already exists"),
        ("POST", "/admin/tenants", {"id": "newco", "plan": "personal", "colour": "red"}, 400, "colour: unknown key"),
        ("POST", "/admin/tenants", {"plan": "personal"}, 400, "id: is required"),
        ("PATCH", "/admin/tenants/acme", {"status": "sleeping"}, 400, "status: must be one of active, suspended"),
        ("PATCH", "/admin/tenants/acme", {"id": "other"}, 400, "cannot change id"),
        ("POST", "/admin/tenants/acme/keys", {"key": "tg_chosen-by-client-0123456789"}, 400, "is set by the gateway"),
        ("POST", "/admin/tenants/acme/keys", {"expires": "2001-01-01T00:00:00Z"}, 400, "is in the past"),
        ("POST", "/admin/tenants/nobody/keys", {}, 404, "no tenant"),
        ("POST", "/admin/keys/nope/revoke", None, 404, "no API key"),
        ("DELETE", "/admin/tenants/acme", None, 400, "declared in the config file"),
        ("GET", "/admin/tenants?limit=0", None, 400, "limit"),
        ("PUT", "/admin/tenants", {}, 405, "not allowed"),
        ("GET", "/admin/nothing-here", None, 404, "unknown admin path"),
    ]
    for method, path, body, expected_status, text in cases:
        status, answer = await admin(gateway, method, path, body)
        assert status == expected_status, (method, path, answer)
        assert text in answer["error"]["message"], (method, path, answer)


async def test_openapi_document_is_served_and_describes_every_admin_route(gateway: Proc) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{gateway.extra_ports['admin']}/admin/openapi.json") as r,
    ):
        assert r.status == 200
        served = await r.json()
    assert served["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in openapi_document(ROUTES)["paths"].items() for m in ops}
    routed = {(m, p) for m, p, _h in ROUTES} | {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/admin/openapi.json")}
    assert documented == routed
    assert set(served["paths"]) == {p for _m, p in routed}


async def test_plans_are_listed_from_the_config(gateway: Proc) -> None:
    status, body = await admin(gateway, "GET", "/admin/plans")
    plans = {p["name"]: p for p in body["data"]}
    assert (
        status == 200
        and plans["government"]["monthly_requests"] == 5_000_000
        and plans["education"]["concurrency"] == 20
    )
