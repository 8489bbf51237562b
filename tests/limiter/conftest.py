"""Fixtures for the limiter suite: one engine per kind (the Redis ones on the servers of tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.support.redis import RedisCluster, RedisServer
from tollgate.clock import ManualClock, SystemClock
from tollgate.limiter.store import EmbeddedEngine, RedisEngine, ScriptEngine

# The engines on Redis start processes (the session's redis-server and Cluster): marked so a quick run leaves them out.
ENGINES = (
    "embedded",
    pytest.param("redis", marks=pytest.mark.process),
    pytest.param("cluster", marks=pytest.mark.process),
)


@dataclass
class Store:
    """An engine plus how to let time pass for it: a manual clock for the embedded one, real sleeps for Redis."""

    kind: str
    engine: ScriptEngine
    clock: ManualClock | None = None

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The same test on the embedded engine, a standalone Redis and a 3-master Redis Cluster."""
    kind = request.param
    if kind == "embedded":
        clock = ManualClock()
        yield Store(kind, EmbeddedEngine(clock), clock)
        return
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_standalone")
        server.flushall()
        engine = RedisEngine(server.url, clock=SystemClock(), timeout=2.0)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster_nodes")
        cluster.flushall()
        engine = RedisEngine(cluster.url, clock=SystemClock(), cluster=True, timeout=2.0)
    try:
        yield Store(kind, engine)
    finally:
        await engine.close()
