"""The registry across real processes: a revocation through one process's admin API stops the key on another
within a second (Redis store and file store), and restarts and reloads keep every runtime change."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from ..support.processes import gateway_process
from .admin_client import admin, admin_listener, public_status
from .conftest import ACME_KEY, GLOBEX_KEY, identity_doc, sha256_hex

pytestmark = [pytest.mark.process, pytest.mark.filterwarnings("ignore::ResourceWarning")]


def _registry(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "file":
        return {"file": str(tmp_path / "registry.json")}
    return {"redis": request.getfixturevalue("own_redis").url}


async def _until(probe: Callable[[], Awaitable[int]], expected: int, *, within: float, since: float) -> float:
    """Poll until ``probe`` answers ``expected``; the seconds it took from ``since``. Fails past ``within``."""
    while True:
        status = await probe()
        elapsed = time.perf_counter() - since
        if status == expected:
            return elapsed
        assert elapsed < within, f"still {status} after {elapsed:.3f}s (wanted {expected})"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_key_revoked_through_process_a_is_refused_by_process_b_within_one_second(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    doc = identity_doc(listeners=admin_listener(), registry=_registry(backend, tmp_path, request))
    with gateway_process(doc) as a, gateway_process(doc) as b:
        async with aiohttp.ClientSession() as s:
            status, created = await admin(a, "POST", "/admin/tenants/acme/keys", {"name": "shared"}, session=s)
            assert status == 201
            key = created["key"]
            await _until(lambda: public_status(b, key, s), 200, within=1.0, since=time.perf_counter())
            for key_id, secret in ((created["id"], key), ("globex-main", GLOBEX_KEY)):
                assert await public_status(b, secret, s) == 200
                started = time.perf_counter()
                status, _ = await admin(a, "POST", f"/admin/keys/{key_id}/revoke", session=s)
                assert status == 200
                elapsed = await _until(
                    lambda secret=secret: public_status(b, secret, s), 401, within=1.0, since=started
                )
                print(f"{backend}: {key_id} refused by the other process {elapsed * 1000:.0f} ms after the revoke call")
                assert await public_status(a, secret, s) == 401


@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_restart_keeps_runtime_tenants_working_keys_and_revocations(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    doc = identity_doc(listeners=admin_listener(), registry=_registry(backend, tmp_path, request))
    async with aiohttp.ClientSession() as s:
        with gateway_process(doc) as gw:
            status, created = await admin(
                gw,
                "POST",
                "/admin/tenants",
                {"id": "hooli", "plan": "education", "keys": [{"name": "main"}]},
                session=s,
            )
            assert status == 201
            hooli_key = created["created_keys"][0]["key"]
            status, doomed = await admin(gw, "POST", "/admin/tenants/acme/keys", {}, session=s)
            await admin(gw, "POST", f"/admin/keys/{doomed['id']}/revoke", session=s)
            await admin(gw, "POST", "/admin/keys/acme-main/revoke", session=s)
            await admin(gw, "POST", "/admin/tenants/globex/suspend", session=s)
            status, before = await admin(gw, "GET", "/admin/tenants?limit=100", session=s)

        with gateway_process(doc) as gw:
            assert await public_status(gw, hooli_key, s) == 200
            assert await public_status(gw, doomed["key"], s) == 401
            assert await public_status(gw, ACME_KEY, s) == 401
            assert await public_status(gw, GLOBEX_KEY, s) == 403
            status, after = await admin(gw, "GET", "/admin/tenants?limit=100", session=s)
            assert after["data"] == before["data"]
            sources = {t["id"]: t["source"] for t in after["data"]}
            assert sources == {"acme": "config", "globex": "config+api", "hooli": "api", "sleepy": "config"}


async def test_config_reload_keeps_runtime_changes_and_takes_new_declarations(tmp_path: Path) -> None:
    doc = identity_doc(listeners=admin_listener(), registry={"file": str(tmp_path / "registry.json")})
    new_key = "tg_newcorp-declared-key-0123456789abcdef"
    async with aiohttp.ClientSession() as s:
        with gateway_process(doc) as gw:
            _status, created = await admin(
                gw, "POST", "/admin/tenants", {"id": "hooli", "plan": "personal", "keys": [{}]}, session=s
            )
            hooli_key = created["created_keys"][0]["key"]
            await admin(gw, "POST", "/admin/keys/acme-main/revoke", session=s)
            assert gw.config_path is not None
            on_disk = yaml.safe_load(gw.config_path.read_text())
            on_disk["tenants"]["newcorp"] = {"plan": "personal", "keys": [{"sha256": sha256_hex(new_key)}]}
            gw.config_path.write_text(yaml.safe_dump(on_disk))
            gw.signal(signal.SIGHUP)
            await _until(lambda: public_status(gw, new_key, s), 200, within=5.0, since=time.perf_counter())
            assert await public_status(gw, hooli_key, s) == 200
            assert await public_status(gw, ACME_KEY, s) == 401
