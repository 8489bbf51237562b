"""Real processes for the production tests: nginx, ``serve --workers N``, and a load loop that records every request."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ..support.processes import REPO, Proc, free_port, gateway_process, owned, start_process, wait_until, worker_pids

__all__ = [
    "ADMIN_TOKEN",
    "LoadLoop",
    "Outcome",
    "chat",
    "is_gone",
    "nginx_in_front",
    "nginx_main_config",
    "read_stream",
    "served_gateway",
    "stream_body",
    "wait_until",
    "worker_pids",
    "write_config",
]

ADMIN_TOKEN = "admin-token-for-tests-0123"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def chat(model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {**CHAT, "model": model}


def stream_body(tokens: int) -> dict[str, Any]:
    return {**CHAT, "stream": True, "max_tokens": tokens}


def nginx_main_config(workdir: Path, listen_port: int, gateway_port: int) -> Path:
    """The repository's config/nginx.conf with test ports, wrapped in a minimal main config writing only to ``workdir``."""
    snippet = (REPO / "config" / "nginx.conf").read_text()
    snippet, listens = re.subn(r"(?m)^(\s*)listen\s+80;", rf"\g<1>listen 127.0.0.1:{listen_port};", snippet)
    snippet, servers = re.subn(r"server 127\.0\.0\.1:8080\b", f"server 127.0.0.1:{gateway_port}", snippet)
    assert (listens, servers) == (1, 1), "config/nginx.conf changed shape: update this test's rewriting"
    (workdir / "tollgate.conf").write_text(snippet)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = workdir / "nginx.conf"
    main.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_paths}
    include {workdir}/tollgate.conf;
}}
"""
    )
    return main


@contextmanager
def nginx_in_front(gateway_port: int) -> Iterator[Proc]:
    """nginx with config/nginx.conf on a free port, proxying to the gateway on ``gateway_port``."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-nginx-"))
    try:
        port = free_port()
        conf = nginx_main_config(workdir, port, gateway_port)
        checked = subprocess.run(
            [binary, "-t", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stderr
        proc = start_process([binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)], port)
        with owned(proc):
            yield proc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_config(path: Path, doc: dict[str, Any]) -> None:
    """Replace the file in one rename, as an operator's deploy tool would (a worker never reads half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def served_gateway(
    config: dict[str, Any], *, workers: int, admin: bool = False, public: dict[str, Any] | None = None
) -> AbstractContextManager[Proc]:
    """``python -m tollgate serve --workers N`` on a free port (``public``: more keys of listeners.public), started once
    every worker is ready; with ``admin``, the admin listener with :data:`ADMIN_TOKEN`."""
    listeners = {"public": public or {}, "admin": {"token": ADMIN_TOKEN} if admin else {"enabled": False}}
    return gateway_process({**config, "listeners": listeners}, workers=workers, stop_timeout=30)


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 :].split()[0] == b"Z"


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    status: int | None  # None: the connection failed
    error: str = ""


@dataclass
class LoadLoop:
    """``clients`` concurrent clients, each sending one request after the other until stopped, recording every outcome."""

    url: str
    clients: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=chat)
    fresh_connections: bool = False  # one connection per request: a failure then belongs to one request only
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(self.url, json=self.body, headers=self.headers) as resp:
                    await resp.read()
                    self.outcomes.append(Outcome(started, time.monotonic(), resp.status))
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.outcomes.append(Outcome(started, time.monotonic(), None, f"{type(exc).__name__}: {exc}"))

    async def run_until(self, stop: asyncio.Event) -> None:
        self._stop = stop
        connector = aiohttp.TCPConnector(limit=0, force_close=self.fresh_connections)
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


async def read_stream(
    session: aiohttp.ClientSession, url: str, tokens: int, headers: dict[str, str], first: asyncio.Event | None = None
) -> bytes:
    """POST a streaming chat completion and read it to the end; ``first`` is set when the first chunk arrived."""
    async with session.post(url, json=stream_body(tokens), headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        data = b""
        async for chunk in resp.content.iter_any():
            if first is not None and not first.is_set():
                first.set()
            data += chunk
        return data
