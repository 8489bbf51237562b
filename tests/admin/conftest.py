"""Fixtures for admin API tests: an in-process gateway's admin application, with principals of every role."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from tollgate.admin import Probes, make_admin_app
from tollgate.clock import Clock
from tollgate.config import load_config
from tollgate.process.public import healthz, public_lifecycle, readyz
from tollgate.process.server import reload_here
from tollgate.runtime.state import GatewayState

from ..identity.conftest import ADMIN_TOKEN, identity_doc, sha256_hex

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
AdminFactory = Callable[..., Awaitable[tuple[Client, GatewayState]]]

VIEWER_TOKEN = "viewer-token-for-role-tests-0123456789"
OPERATOR_TOKEN = "operator-token-for-role-tests-012345678"
TENANT_ADMIN_TOKEN = "acme-admin-token-for-role-tests-0123456"
TOKENS = {"viewer": VIEWER_TOKEN, "operator": OPERATOR_TOKEN, "admin": ADMIN_TOKEN, "tenant_admin": TENANT_ADMIN_TOKEN}
NAMES = {"viewer": "dash", "operator": "ops-bot", "admin": "admin", "tenant_admin": "acme-admin"}
PRINCIPALS: list[dict[str, Any]] = [
    {"name": "dash", "role": "viewer", "token": VIEWER_TOKEN},
    {"name": "ops-bot", "role": "operator", "token_sha256": sha256_hex(OPERATOR_TOKEN)},
    {"name": "acme-admin", "role": "tenant_admin", "token": TENANT_ADMIN_TOKEN, "tenants": ["acme"]},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_app(tmp_path: Path, aiohttp_client: MakeClient) -> AsyncIterator[AdminFactory]:
    """Starts the admin application of a gateway whose config has ``admin`` (default: a principal of each role)."""
    lifecycles: list[Any] = []

    async def start(admin: dict[str, Any] | None = None, clock: Clock | None = None) -> tuple[Client, GatewayState]:
        doc = identity_doc(
            listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
            registry={"file": str(tmp_path / "registry.json")},
            admin=admin if admin is not None else {"principals": PRINCIPALS},
        )
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(doc))
        state = GatewayState(load_config(path), config_path=str(path), clock=clock)
        lifecycle = public_lifecycle(state)
        await lifecycle.__aenter__()
        lifecycles.append(lifecycle)
        app = make_admin_app(state, probes=Probes(healthz, readyz), reload=reload_here)
        return await aiohttp_client(app), state

    yield start
    for lifecycle in reversed(lifecycles):
        await lifecycle.__aexit__(None, None, None)
