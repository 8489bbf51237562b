"""The response cache across two gateway processes sharing a real redis-server: the Redis level, and invalidation
through the admin API of one process reaching the other within ``cache.generation_poll``."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from typing import Any

import aiohttp

from tollgate.policy.response_cache import CACHE_HEADER

from ..support.processes import Proc, gateway_config, gateway_process
from ..support.redis import RedisServer

KEY = "tg_cache_fleet_test_key_0123456789abcdefgh"
ADMIN_TOKEN = "admin-token-for-cache-fleet-tests-0123456"
POLL = 0.2  # cache.generation_poll of these gateways, seconds
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 8}


def doc(mock: Proc, redis: RedisServer) -> dict[str, Any]:
    return gateway_config(
        f"{mock.url}/v1",
        listeners={"admin": {"enabled": True, "token": ADMIN_TOKEN}},
        identity={"chain": ["api_key"]},
        tenants={"acme": {"plan": "enterprise", "keys": [{"id": "acme-1", "key": KEY}]}},
        store={"backend": "redis", "url": redis.url, "key_prefix": f"t{time.monotonic_ns()}", "timeout": "5s"},
        cache={"enabled": True, "generation_poll": f"{POLL}s", "remote_timeout": "2s"},
    )


async def chat(s: aiohttp.ClientSession, gw: Proc, body: dict[str, Any] = BODY) -> tuple[str, bytes]:
    async with s.post(f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status == 200, await r.text()
        return r.headers[CACHE_HEADER], await r.read()


async def stored_in_redis(redis: RedisServer, config: dict[str, Any], count: int = 1) -> None:
    """Wait until ``count`` entries are in Redis (a process writes them in the background, never waited for)."""
    pattern = f"{config['store']['key_prefix']}:rc:{{*}}:*"
    with redis.client() as client:
        for _ in range(100):
            if len(client.keys(pattern)) >= count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("no entry reached Redis within 5 s")


async def test_an_answer_stored_by_one_process_is_a_hit_in_the_other_then_invalidated_in_both(
    mock: Proc, redis: RedisServer
) -> None:
    with ExitStack() as stack:
        config = doc(mock, redis)  # one key prefix for both
        a, b = (stack.enter_context(gateway_process(config)) for _ in range(2))
        async with aiohttp.ClientSession() as s:
            state, first = await chat(s, a)
            assert state == "miss"
            await stored_in_redis(redis, config)
            state, from_redis = await chat(s, b)
            assert (state, from_redis) == ("hit", first)  # B had never seen it: Redis answered
            state, _ = await chat(s, b)
            assert state == "hit"  # now from B's own level

            admin = f"http://127.0.0.1:{a.extra_ports['admin']}"
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with s.delete(f"{admin}/admin/cache", params={"tenant": "acme"}, headers=headers) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
            invalidated_at = time.monotonic()
            assert answer["tenant"] == "acme" and answer["other_processes_within_s"] == POLL
            # B stops answering the cleared entry within the poll interval (generous bound for a busy machine).
            while True:
                state, body = await chat(s, b)
                if state == "miss":
                    break
                assert time.monotonic() - invalidated_at < POLL + 2.0, "B still served a cleared entry"
                await asyncio.sleep(0.02)
            assert body != first  # a new answer from the upstream (new id), not the cleared one
            state, _ = await chat(s, a, {**BODY, "max_tokens": 9})
            assert state == "miss"
            for _ in range(50):  # audit events are written in the background
                async with s.get(f"{admin}/admin/audit", headers=headers) as r:
                    events = (await r.json())["events"]
                mine = [e for e in events if e["target"] == "/admin/cache" and e["detail"]["method"] == "DELETE"]
                if mine:
                    break
                await asyncio.sleep(0.1)
            assert mine and mine[0]["actor"] == "admin" and mine[0]["after"]["tenant"] == "acme"


async def test_an_invalidation_of_everything_reaches_the_other_process(mock: Proc, redis: RedisServer) -> None:
    with ExitStack() as stack:
        config = doc(mock, redis)  # one key prefix for both
        a, b = (stack.enter_context(gateway_process(config)) for _ in range(2))
        async with aiohttp.ClientSession() as s:
            body = {**BODY, "max_tokens": 7}
            await chat(s, a, body)
            await stored_in_redis(redis, config)
            assert (await chat(s, b, body))[0] == "hit"
            admin = f"http://127.0.0.1:{a.extra_ports['admin']}"
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with s.delete(f"{admin}/admin/cache", headers=headers) as r:
                assert r.status == 200
            await asyncio.sleep(POLL + 1.0)
            state, _ = await chat(s, b, body)
            assert state == "miss"
