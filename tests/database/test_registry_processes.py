"""Two gateway processes on one PostgreSQL (database.url, no registry: section): each sees the other's tenant and key
changes through the admin API within a second, and the runtime records outlive both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from ..identity.admin_client import admin, admin_listener, public_status
from ..identity.conftest import GLOBEX_KEY, identity_doc
from ..support.processes import gateway_process

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def _within(probe: Callable[[], Awaitable[int]], expected: int, seconds: float) -> float:
    started = time.perf_counter()
    while True:
        status = await probe()
        elapsed = time.perf_counter() - started
        if status == expected:
            return elapsed
        assert elapsed < seconds, f"still {status} after {elapsed:.3f}s (wanted {expected})"
        await asyncio.sleep(0.01)


async def test_two_gateways_on_one_postgres_see_each_others_tenant_and_key_changes_within_a_second(
    postgres_url: str,
) -> None:
    doc = identity_doc(listeners=admin_listener(), database={"url": postgres_url})
    with gateway_process(doc) as a, gateway_process(doc) as b:
        async with aiohttp.ClientSession() as s:
            # a tenant with a key, created through A, works on B
            status, created = await admin(
                a, "POST", "/admin/tenants", {"id": "hooli", "plan": "education", "keys": [{"name": "main"}]}, session=s
            )
            assert status == 201, created
            hooli_key = created["created_keys"][0]["key"]
            await _within(lambda: public_status(b, hooli_key, s), 200, 1.0)
            # a key created through B works on A
            status, made = await admin(b, "POST", "/admin/tenants/hooli/keys", {"name": "second"}, session=s)
            assert status == 201, made
            await _within(lambda: public_status(a, made["key"], s), 200, 1.0)
            # revoked through A: refused by B; a tenant suspended through B: refused by A
            status, _ = await admin(a, "POST", f"/admin/keys/{made['id']}/revoke", session=s)
            assert status == 200
            await _within(lambda: public_status(b, made["key"], s), 401, 1.0)
            status, _ = await admin(b, "POST", "/admin/tenants/globex/suspend", session=s)
            assert status == 200
            await _within(lambda: public_status(a, GLOBEX_KEY, s), 403, 1.0)
            # a tenant created on both at once: one wins, the other is told it exists
            results = await asyncio.gather(
                admin(a, "POST", "/admin/tenants", {"id": "initech", "plan": "personal"}, session=s),
                admin(b, "POST", "/admin/tenants", {"id": "initech", "plan": "personal"}, session=s),
            )
            assert sorted(status for status, _ in results) == [201, 409]

    with gateway_process(doc) as c:  # a restart finds every runtime change in the database
        async with aiohttp.ClientSession() as s:
            assert await public_status(c, hooli_key, s) == 200
            assert await public_status(c, made["key"], s) == 401
            assert await public_status(c, GLOBEX_KEY, s) == 403
