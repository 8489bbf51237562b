"""The command line: `tollgate demo` answers a curl on a fresh start; `mock-upstream` serves."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from .support.processes import free_port, start_process

pytestmark = pytest.mark.process


@pytest.mark.serial  # the demo's start is timed in wall-clock
async def test_demo_starts_prints_a_snippet_and_answers_the_printed_request_with_its_key_only(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    env = {"XDG_DATA_HOME": str(tmp_path)}  # the demo's database goes there, not into the home folder
    proc = start_process([sys.executable, "-m", "tollgate", "demo", "--port", str(port)], port, env=env)
    try:
        assert time.monotonic() - started < 10
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=body,
                headers={"Authorization": "Bearer tg_demo_0123456789abcdef0123456789abcdef"},
            ) as r,
        ):
            assert r.status == 200
            reply = await r.json()
        assert reply["choices"][0]["message"]["content"]
        claude = {**body, "model": "claude-sonnet"}  # served by the mock's Anthropic API, translated both ways
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=claude,
                headers={"Authorization": "Bearer tg_demo_0123456789abcdef0123456789abcdef"},
            ) as r,
        ):
            assert r.status == 200
            assert r.headers["x-tollgate-model"] == "claude-sonnet"
            reply = await r.json()
        assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]
        assert reply["usage"]["completion_tokens"] > 0
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r,
        ):
            assert r.status == 401  # the demo is not an open relay: its key is required
        for _ in range(50):
            if "curl -s" in proc.log():
                break
            time.sleep(0.05)
        log = proc.log()
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in log
        assert "from openai import OpenAI" in log
        database = tmp_path / "tollgate" / "demo.db"
        assert f"kept in {database}" in log
    finally:
        assert proc.stop() == 0
    with sqlite3.connect(database) as db:  # the data of record outlives the process
        assert db.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1


@pytest.mark.serial  # the demo's start is timed in wall-clock
async def test_demo_takes_a_free_admin_port_when_8081_is_taken_and_says_which(tmp_path: Path) -> None:
    port = free_port()
    blocker = socket.socket()
    try:  # take 8081 (already taken by something else is just as good)
        blocker.bind(("127.0.0.1", 8081))
        blocker.listen()
    except OSError:
        pass
    env = {"XDG_DATA_HOME": str(tmp_path)}
    proc = start_process([sys.executable, "-m", "tollgate", "demo", "--port", str(port)], port, env=env)
    try:
        for _ in range(100):
            if "Its tenants" in proc.log():
                break
            time.sleep(0.05)
        log = proc.log()
        assert "admin port 8081 is taken, so a free one was chosen; --admin-port names one" in log
        found = re.search(r"Admin API: http://127\.0\.0\.1:(\d+)/admin", log)
        assert found is not None, log
        admin_port = int(found.group(1))
        assert admin_port != 8081
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin_port}/healthz") as r:
            assert r.status == 200  # the admin API answers where the demo said
        assert "WARNING" not in log and "Traceback" not in log  # a calm start
    finally:
        blocker.close()
        assert proc.stop() == 0


@pytest.mark.serial  # the demo's start is timed in wall-clock
async def test_demo_named_port_in_use_fails_naming_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "tollgate", "demo", "--port", str(port), "--admin-port", str(free_port())],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path)},
        )
    assert out.returncode == 1
    assert f"--port {port} named a port in use" in out.stderr
    assert "Traceback" not in out.stderr


async def test_mock_upstream_command_serves_models() -> None:
    port = free_port()
    proc = start_process([sys.executable, "-m", "tollgate", "mock-upstream", "--port", str(port)], port)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/v1/models") as r:
            assert r.status == 200
            assert (await r.json())["object"] == "list"
    finally:
        proc.stop()
