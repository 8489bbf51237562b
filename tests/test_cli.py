"""The command line: `tollgate demo` answers a curl on a fresh start; `mock-upstream` serves."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from .support.processes import free_port, start_process

pytestmark = pytest.mark.process


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


async def test_mock_upstream_command_serves_models() -> None:
    port = free_port()
    proc = start_process([sys.executable, "-m", "tollgate", "mock-upstream", "--port", str(port)], port)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/v1/models") as r:
            assert r.status == 200
            assert (await r.json())["object"] == "list"
    finally:
        proc.stop()
