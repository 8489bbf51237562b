"""What reached the mock upstream (its request log) and what the gateway wrote to its access log, read by tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

__all__ = ["access_lines", "header_values", "recorded"]


async def recorded(mock_url: str) -> list[dict[str, Any]]:
    """The requests the mock received, oldest first (its ``/_mock/requests`` log)."""
    async with aiohttp.ClientSession() as s, s.get(f"{mock_url}/_mock/requests") as r:
        return list((await r.json())["requests"])


def header_values(request: dict[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` (lower case) in one recorded request."""
    return [v for k, v in request["headers"] if k.lower() == name]


async def access_lines(log: Path, count: int) -> list[dict[str, Any]]:
    """The access log's JSON lines, once it has at least ``count`` (the log is written off the hot path)."""
    for _ in range(100):
        if log.exists():
            lines = [orjson.loads(line) for line in log.read_bytes().splitlines() if line]
            if len(lines) >= count:
                return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"the access log has fewer than {count} lines")
