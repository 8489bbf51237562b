"""Fixtures for accounting tests: tenants with keys, a gateway process on their config, a webhook receiver."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ..support.processes import Proc, free_port, gateway_config, gateway_process

ACME_KEY = "tg_acct-acme-key-0123456789abcdefghijklmnop"
GLOBEX_KEY = "tg_acct-globex-key-0123456789abcdefghijklmn"
SLEEPY_KEY = "tg_acct-sleepy-key-0123456789abcdefghijklmn"
UPSTREAM_KEY = "sk-upstream-secret-never-logged-0123456789"
ADMIN_TOKEN = "admin-token-for-accounting-tests-0123456789"
WEBHOOK_SECRET = "webhook-shared-secret-0123456789"
PRICES = {
    "gpt-4o-mini": {"input_per_1k": 0.15, "output_per_1k": 0.6},
    "gpt-4o": {"input_per_1k": 2.5, "output_per_1k": 10.0},
}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def accounting_doc(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A gateway with tenants acme (enterprise), globex (a 20-request monthly quota) and sleepy (suspended), and prices."""
    doc = gateway_config(
        upstream_url,
        upstreams={"mock": {"base_url": upstream_url, "api_key": UPSTREAM_KEY}},
        models={
            "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
            "gpt-4o": {"deployments": [{"upstream": "mock"}]},
            "text-embedding-3-small": {"deployments": [{"upstream": "mock"}]},
        },
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        identity={"chain": ["api_key"]},
        plans={"metered": {"monthly_requests": 20, "concurrency": 50}},
        tenants={
            "acme": {"plan": "enterprise", "keys": [{"id": "acme-main", "sha256": sha256_hex(ACME_KEY)}]},
            "globex": {"plan": "metered", "keys": [{"id": "globex-main", "sha256": sha256_hex(GLOBEX_KEY)}]},
            "sleepy": {
                "plan": "personal",
                "status": "suspended",
                "keys": [{"id": "sleepy-main", "sha256": sha256_hex(SLEEPY_KEY)}],
            },
        },
        pricing={"currency": "USD", "models": PRICES},
        usage={"flush_interval": "200ms"},
    )
    doc.update(overrides)
    return doc


def gateway(
    doc: dict[str, Any], *, workers: int = 1, env: dict[str, str] | None = None
) -> AbstractContextManager[Proc]:
    """``tollgate serve`` (with ``--workers`` when > 1) on free ports; ``proc.extra_ports['admin']`` is the admin port."""
    return gateway_process(doc, workers=workers if workers > 1 else None, env=env, stop_timeout=30)


def stop_gracefully(proc: Proc) -> int:
    proc.popen.send_signal(signal.SIGTERM)
    return proc.popen.wait(30)


class Admin:
    """A small client of the admin API."""

    def __init__(self, proc: Proc) -> None:
        self.base = f"http://127.0.0.1:{proc.extra_ports['admin']}"
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def get(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as s, s.get(self.base + path, headers=self.headers, params=params) as r:
            assert r.status == 200, await r.text()
            if r.content_type == "application/json":
                return await r.json()
            return await r.text()


async def post_chat(
    session: aiohttp.ClientSession,
    proc: Proc,
    key: str,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    model: str = "gpt-4o-mini",
    content: str = "hello there",
) -> tuple[int, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    async with session.post(
        f"{proc.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **(headers or {})}
    ) as r:
        if stream and r.status == 200:
            return r.status, await r.read()
        return r.status, await r.json(content_type=None)


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval)


class WebhookReceiver:
    """A local aiohttp server recording alert deliveries; ``delay`` makes it slow, ``status`` makes it fail."""

    def __init__(self, *, delay: float = 0.0, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as receiver:
        yield receiver
