"""A concurrency key outlives every lease it holds, though a busy key's TTL is lengthened only now and then
(lua/concurrency.lua remembers when it last lengthened it, and for as long as which lease was then the earliest)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis

from .conftest import Store
from .scriptcalls import Lim, admit, peek

pytestmark = pytest.mark.serial  # TTLs read against wall-clock time

WINDOW = 1_000  # the lease TTL, ms; a lengthened TTL is a second more
LIM = Lim("{t}:cc.ttl", "concurrency", 1_000, WINDOW)


def raw(store: Store, request: pytest.FixtureRequest, *command: Any) -> Any:
    """A command sent to the store itself, around the scripts (as an earlier gateway version would write)."""
    if store.kind == "embedded":
        return store.engine.keyspace.call(*command)  # type: ignore[attr-defined]
    if store.kind == "redis":
        client: Any = request.getfixturevalue("redis_standalone").client()
    else:
        client = redis.RedisCluster.from_url(request.getfixturevalue("redis_cluster_nodes").url)
    with client:
        return client.execute_command(*command)


_TTL_NOW = "local t = redis.call('TIME') return {t[1], t[2], redis.call('PTTL', KEYS[1])}"


async def assert_outlives_its_leases(store: Store, request: pytest.FixtureRequest) -> None:
    if store.kind == "embedded":  # the keyspace's time is that of the last call
        now_ms = (await peek(store.engine, dataclasses.replace(LIM, cost=0))).now_us // 1000
        ttl = int(raw(store, request, "PTTL", LIM.key))
    else:  # the TTL and the time read together
        got = raw(store, request, "EVAL", _TTL_NOW, 1, LIM.key)
        now_ms, ttl = int(got[0]) * 1000 + int(got[1]) // 1000, int(got[2])
    reply = raw(store, request, "ZRANGE", LIM.key, "0", "-1", "WITHSCORES")
    scores = [pair[1] for pair in reply] if isinstance(reply[0], (list, tuple)) else reply[1::2]  # redis-py pairs
    newest = max(float(v) for v in scores)
    assert now_ms + ttl >= newest - 1, (now_ms, ttl, newest)
    assert ttl <= 2 * WINDOW + 2


async def test_a_busy_concurrency_key_outlives_its_newest_lease_after_every_admission(
    store: Store, request: pytest.FixtureRequest
) -> None:
    for n in range(40):
        assert (await admit(store.engine, dataclasses.replace(LIM, param=f"lease-{n}"))).admitted
        await assert_outlives_its_leases(store, request)
        await store.advance(0.04)


async def test_a_key_started_again_by_another_writer_is_lengthened_by_the_next_admission(
    store: Store, request: pytest.FixtureRequest
) -> None:
    await admit(store.engine, dataclasses.replace(LIM, param="a"))
    await store.advance(0.01)
    await admit(store.engine, dataclasses.replace(LIM, param="b"))  # lengthened: the TTL is remembered
    # Another writer (an earlier gateway version, a script run by EVALSHA) empties the key and starts it again, with
    # the TTL of its one lease; the remembered TTL no longer holds.
    now_ms = (await peek(store.engine, dataclasses.replace(LIM, cost=0))).now_us // 1000
    raw(store, request, "DEL", LIM.key)
    raw(store, request, "ZADD", LIM.key, str(now_ms + WINDOW), "x")
    raw(store, request, "PEXPIRE", LIM.key, str(WINDOW + 1))
    await store.advance(0.3)
    await admit(store.engine, dataclasses.replace(LIM, param="c"))
    await assert_outlives_its_leases(store, request)
