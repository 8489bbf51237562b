"""``serve --workers N`` with real processes: a killed worker is replaced, reloads under load drop nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from ..support.processes import Proc, gateway_config
from .support import (
    ADMIN_TOKEN,
    LoadLoop,
    chat,
    is_gone,
    served_gateway,
    wait_until,
    worker_pids,
    write_config,
)

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"), pytest.mark.mock_upstream("--no-record")]

SLOW = {"x-mock-latency-ms": "60"}  # keeps requests in flight on every worker
SOCKET_TEARDOWN = 0.05


def _config(mock: Proc, redis_url: str, **extra: Any) -> dict[str, Any]:
    return gateway_config(f"{mock.url}/v1", store={"backend": "redis", "url": redis_url}, **extra)


def test_more_than_one_worker_on_the_embedded_store_is_refused_before_anything_starts(mock: Proc) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(gateway_config(f"{mock.url}/v1"), fh)
        fh.flush()
        done = subprocess.run(
            [sys.executable, "-m", "tollgate", "serve", "--config", fh.name, "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert "embedded" in done.stderr and "backend: redis" in done.stderr


def test_a_broken_file_fails_fast_with_field_paths_and_starts_no_worker(mock: Proc, redis_url: str) -> None:
    doc = _config(mock, redis_url, guard={"max_body_bytes": "lots"})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        yaml.safe_dump(doc, fh)
        fh.flush()
        done = subprocess.run(
            [sys.executable, "-m", "tollgate", "serve", "--config", fh.name, "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert "guard.max_body_bytes" in done.stderr
    assert "worker" not in done.stderr


async def test_killing_one_worker_under_load_loses_only_its_in_flight_requests_and_it_is_replaced(
    mock: Proc, redis_url: str
) -> None:
    with served_gateway(_config(mock, redis_url), workers=2) as gw:
        supervisor = gw.popen.pid
        before = worker_pids(supervisor)
        victim = before[1]
        load = LoadLoop(f"{gw.url}/v1/chat/completions", clients=16, headers=SLOW, fresh_connections=True)
        stop = asyncio.Event()
        running = asyncio.create_task(load.run_until(stop))
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while not is_gone(victim):
            await asyncio.sleep(0.002)
        dead_at = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: worker_pids(supervisor).get(1) not in (None, victim), 10)
        await asyncio.to_thread(wait_until, lambda: gw.log().count("worker 1 ready") >= 2, 10)
        await asyncio.sleep(1.0)
        stop.set()
        await running

    # The kernel finishes tearing down a killed process's listening socket a few milliseconds after the
    # process shows as dead; a connection that lands on it in that window is reset like one in flight.
    settled_at = dead_at + SOCKET_TEARDOWN
    failures = load.failures()
    after_replacement = [o for o in load.outcomes if o.started > settled_at]
    assert len(load.outcomes) > 200
    # Only requests that were already in flight when the worker died fail: at most one per client ...
    assert len(failures) <= load.clients, failures
    for failed in failures:
        assert failed.status is None, f"a worker death must cost connections, not answers: {failed}"
        assert failed.started < settled_at and failed.ended >= killed_at, failed
    # ... and every request sent after it died, before and after its replacement started, succeeded.
    assert after_replacement and all(o.status == 200 for o in after_replacement)
    assert f"worker 1 (pid {victim}) exited with signal SIGKILL: restarting" in gw.log()


async def test_reload_under_load_in_every_worker_fails_no_request(mock: Proc, redis_url: str) -> None:
    doc = _config(mock, redis_url)
    with served_gateway(doc, workers=2, admin=True) as gw:
        assert gw.config_path is not None
        path: Path = gw.config_path
        live = yaml.safe_load(path.read_text())
        load = LoadLoop(f"{gw.url}/v1/chat/completions", clients=16, headers=SLOW)
        stop = asyncio.Event()
        running = asyncio.create_task(load.run_until(stop))
        await asyncio.sleep(0.5)

        # 1. a valid change by SIGHUP: a new model appears in every worker
        live["models"]["gpt-4o-reloaded"] = {"deployments": [{"upstream": "mock"}]}
        write_config(path, live)
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0.7)
        # 2. a broken file: refused once by the supervisor, no worker disturbed
        write_config(path, {**live, "guard": {"max_body_bytes": "lots"}})
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0.7)
        # 3. the valid file again, through the admin API of worker 0, which reaches every worker
        live["models"]["gpt-4o-second"] = {"deployments": [{"upstream": "mock"}]}
        write_config(path, live)
        admin = f"http://127.0.0.1:{gw.extra_ports['admin']}/admin/reload"
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as s,
            s.post(admin) as r,
        ):
            assert r.status == 202, await r.text()
        await asyncio.sleep(0.7)
        stop.set()
        await running

        # Fresh connections land on both workers (SO_REUSEPORT hashes each one): every one knows both new models.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:
            for model in ("gpt-4o-reloaded", "gpt-4o-second") * 10:
                async with s.post(f"{gw.url}/v1/chat/completions", json=chat(model)) as r:
                    assert r.status == 200, (model, await r.text())
        log = gw.log()

    assert len(load.outcomes) > 100
    assert load.failures() == []
    assert log.count("reload refused, every worker keeps its config") == 1
    assert "guard.max_body_bytes" in log
    for index in (0, 1):
        assert any(f"worker-{index}[" in line and "config version 3 in force" in line for line in log.splitlines()), log
    assert "config version 4" not in log  # the refused file reached no worker


async def test_admin_reload_in_a_single_process_answers_the_new_version_or_the_problems(
    mock: Proc, redis_url: str
) -> None:
    with served_gateway(gateway_config(f"{mock.url}/v1"), workers=1, admin=True) as gw:
        assert gw.config_path is not None
        live = yaml.safe_load(gw.config_path.read_text())
        admin = f"http://127.0.0.1:{gw.extra_ports['admin']}/admin/reload"
        async with aiohttp.ClientSession() as s:
            async with s.post(admin) as r:
                assert r.status == 401  # the admin token guards it like every admin route
            bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with s.post(admin, headers=bearer) as r:
                assert (r.status, (await r.json())["config_version"]) == (200, 2)
            write_config(gw.config_path, {**live, "guard": {"max_body_bytes": "lots"}})
            async with s.post(admin, headers=bearer) as r:
                body = await r.json()
                assert r.status == 422
                assert body["error"]["code"] == "config_refused"
                assert any(p.startswith("guard.max_body_bytes") for p in body["problems"])
            async with s.get(f"{gw.url}/v1/models") as r:
                assert r.status == 200  # still serving on version 2
