"""An in-process gateway (real HTTP on loopback, injectable clock, inspectable state) in front of a real mock process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tollgate.clock import Clock
from tollgate.config import config_from_dict
from tollgate.process.public import make_public_server, public_lifecycle
from tollgate.runtime.state import GatewayState

from ..support.processes import refusing_port, steerable

MSG = [{"role": "user", "content": "hi"}]
# A mock upstream whose fault headers are overridden by the gateway: whatever the client asks, it behaves.
HEALTHY = {
    "x-mock-status": "0",
    "x-mock-cut-after": "off",
    "x-mock-stall-after": "off",
    "x-mock-malformed-after": "off",
    "x-mock-latency-ms": "0",
}


def config_doc(
    mock_url: str, models: dict[str, Any], resilience: dict[str, Any] | None = None, **upstreams: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {
            "mock": {"base_url": f"{mock_url}/v1"},
            "healthy": {"base_url": f"{mock_url}/v1", "headers": HEALTHY},
            "dead": {"base_url": f"http://127.0.0.1:{refusing_port()}/v1", "timeouts": {"connect": "1s"}},
            **upstreams,
        },
        "models": models,
    }
    if resilience is not None:
        doc["resilience"] = resilience
    return steerable(doc)  # the client's x-mock-* headers reach the mock


@asynccontextmanager
async def gateway(
    doc: dict[str, Any], clock: Clock | None = None, **state_options: Any
) -> AsyncIterator[tuple[str, GatewayState]]:
    """A gateway in this test's event loop on a free port (``state_options``: more keywords of GatewayState)."""
    state = GatewayState(config_from_dict(doc), clock=clock, **state_options)
    async with public_lifecycle(state):
        server = make_public_server(state)
        port = await server.start("127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}", state
        finally:
            await server.shutdown(5.0)


async def chat(
    session: aiohttp.ClientSession, url: str, model: str, headers: dict[str, str] | None = None, **body: Any
) -> tuple[int, dict[str, str], bytes]:
    payload = {"model": model, "messages": MSG, **body}
    async with session.post(f"{url}/v1/chat/completions", json=payload, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def mock_get(mock_url: str, what: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(f"{mock_url}/_mock/{what}") as r:
        return await r.json()


async def mock_reset(mock_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        await (await s.delete(f"{mock_url}/_mock/requests")).read()
        await (await s.delete(f"{mock_url}/_mock/stats")).read()


async def upstream_calls_by_request(mock_url: str) -> dict[str, list[dict[str, Any]]]:
    """The mock's recorded requests grouped by the x-request-id the gateway sent."""
    data = await mock_get(mock_url, "requests")
    out: dict[str, list[dict[str, Any]]] = {}
    for r in data["requests"]:
        rid = next((v for k, v in r["headers"] if k.lower() == "x-request-id"), "?")
        out.setdefault(rid, []).append(r)
    return out


async def gather_limited(coros: list[Any]) -> list[Any]:
    return list(await asyncio.gather(*coros))
