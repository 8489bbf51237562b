"""A small client for the admin API of a gateway process, and a public-listener probe."""

from __future__ import annotations

from typing import Any

import aiohttp

from ..support.processes import Proc
from .conftest import ADMIN_TOKEN


def admin_url(proc: Proc) -> str:
    return f"http://127.0.0.1:{proc.extra_ports['admin']}"


async def admin(
    proc: Proc,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = ADMIN_TOKEN,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    own = session is None
    s = session or aiohttp.ClientSession()
    try:
        async with s.request(method, f"{admin_url(proc)}{path}", json=body, headers=headers) as r:
            return r.status, await r.json()
    finally:
        if own:
            await s.close()


async def public_status(proc: Proc, key: str, session: aiohttp.ClientSession, path: str = "/v1/models") -> int:
    async with session.get(f"{proc.url}{path}", headers={"Authorization": f"Bearer {key}"}) as r:
        await r.read()
        return r.status


def admin_listener(**extra: Any) -> dict[str, Any]:
    return {
        "public": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": True, "host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN, **extra},
    }
