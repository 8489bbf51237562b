"""Redis 7 Functions: one library per version, FCALL on the hot path, EVALSHA where a server cannot or may not."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from tests.support.redis import RedisServer, redis_server
from tollgate.circuit_breaker import BreakerSettings
from tollgate.clock import SystemClock
from tollgate.errors import StoreError
from tollgate.limiter.store import RedisEngine
from tollgate.limiter.store.scripts import ENTRY_SCRIPTS, function_library, load_scripts

from .scriptcalls import Lim, admit, peek

MINUTE = 60_000
LIM = Lim("{fn}:sw", "sliding_window", 100, MINUTE, param="10")


def commandstats(server: RedisServer, command: str) -> int:
    with server.client() as c:
        return int(c.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_the_library_registers_every_script_once_with_each_included_file_once() -> None:
    scripts = load_scripts()
    lib = function_library(scripts)
    assert lib.code.startswith(f"#!lua name={lib.name}\n")
    assert sorted(lib.functions) == sorted(ENTRY_SCRIPTS)
    for name in ENTRY_SCRIPTS:
        assert lib.code.count(f"function_name = '{lib.functions[name]}'") == 1
    for included in scripts["admit"].includes:
        assert lib.code.count(f"-- >>> {included}\n") == 1
    peek_name = lib.functions["peek"]
    assert f"function_name = '{peek_name}', flags = {{ 'no-writes' }}" in lib.code


def test_another_version_of_the_scripts_makes_a_library_and_functions_of_other_names() -> None:
    scripts = load_scripts()
    changed = dict(scripts)
    changed["peek"] = dataclasses.replace(scripts["peek"], source=scripts["peek"].source + "\n-- v2")
    old, new = function_library(scripts), function_library(changed)
    assert old.name != new.name
    assert not set(old.functions.values()) & set(new.functions.values())
    assert function_library(load_scripts()) == old  # the same files, the same names


@pytest.mark.process
async def test_the_scripts_are_called_with_fcall_on_redis_7(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    with redis_standalone.client() as c:
        c.function_flush()
        c.config_resetstat()
    engine = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0)
    try:
        await engine.start()
        for remaining in (99, 98, 97):
            assert (await admit(engine, LIM))[0].remaining == remaining
        assert (await peek(engine, LIM))[0].remaining == 97
        assert commandstats(redis_standalone, "fcall") == 4
        assert commandstats(redis_standalone, "evalsha") == 0
        with redis_standalone.client() as c:
            names = [dict(zip(lib[::2], lib[1::2]))[b"library_name"] for lib in c.function_list()]
        assert names == [function_library(load_scripts()).name.encode()]
    finally:
        await engine.close()


@pytest.mark.process
async def test_two_versions_of_the_library_share_a_server_during_a_rolling_upgrade(
    redis_standalone: RedisServer,
) -> None:
    redis_standalone.flushall()
    scripts = load_scripts()
    newer = dict(scripts)
    newer["admit"] = dataclasses.replace(scripts["admit"], source=scripts["admit"].source + "\n-- v2")
    old = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, scripts=scripts)
    new = RedisEngine(redis_standalone.url, clock=SystemClock(), timeout=2.0, scripts=newer)
    try:
        await old.start()
        await new.start()
        assert (await admit(old, LIM))[0].remaining == 99
        assert (await admit(new, LIM))[0].remaining == 98
        assert (await admit(old, LIM))[0].remaining == 97
        assert old.stats.failures == new.stats.failures == old.stats.noscript_reloads == 0
        with redis_standalone.client() as c:
            assert len(c.function_list()) == 2
    finally:
        await old.close()
        await new.close()


@pytest.fixture
def redis_without_functions() -> Iterator[RedisServer]:
    """A server where FUNCTION does not exist (renamed away), as on Redis 6."""
    with redis_server(extra_args=("--rename-command", "FUNCTION", '""')) as server:
        yield server


@pytest.mark.process
@pytest.mark.parametrize("started", [True, False], ids=["start", "first-call"])
async def test_a_server_without_functions_gets_evalsha(redis_without_functions: RedisServer, started: bool) -> None:
    engine = RedisEngine(redis_without_functions.url, clock=SystemClock(), timeout=2.0)
    try:
        if started:
            await engine.start()
        for remaining in (99, 98):
            assert (await admit(engine, LIM))[0].remaining == remaining
        assert commandstats(redis_without_functions, "evalsha") == 2
        assert commandstats(redis_without_functions, "fcall") == 0
        assert engine.stats.failures == 0 and engine.stats.noscript_reloads == 0
    finally:
        await engine.close()


@pytest.mark.process
async def test_a_server_that_stops_allowing_fcall_is_answered_with_eval_then_evalsha(own_redis: RedisServer) -> None:
    engine = RedisEngine(own_redis.url, clock=SystemClock(), timeout=2.0)
    try:
        await engine.start()
        assert (await admit(engine, LIM))[0].remaining == 99
        with own_redis.client() as c:
            c.execute_command("ACL", "SETUSER", "default", "-fcall")
        assert (await admit(engine, LIM))[0].remaining == 98  # refused, re-sent with EVAL
        assert (await admit(engine, LIM))[0].remaining == 97
        assert engine.stats.failures == 0 and engine.stats.noscript_reloads == 1
        assert commandstats(own_redis, "evalsha") == 1
    finally:
        await engine.close()


@pytest.mark.process
async def test_a_library_lost_by_a_restart_is_loaded_again_by_the_first_call(own_redis: RedisServer) -> None:
    breaker = BreakerSettings(failures=1000, open_seconds=0.01)
    engine = RedisEngine(own_redis.url, clock=SystemClock(), timeout=2.0, breaker=breaker)
    try:
        await engine.start()
        assert (await admit(engine, LIM))[0].remaining == 99
        own_redis.kill()
        own_redis.start()
        for _ in range(50):  # the connections of before the restart fail once, then the engine opens new ones
            try:
                first = await admit(engine, LIM)
                break
            except StoreError:
                await asyncio.sleep(0.02)
        assert first[0].remaining == 99  # a new, empty server
        assert engine.stats.noscript_reloads == 1
        assert (await admit(engine, LIM))[0].remaining == 98
        assert engine.stats.noscript_reloads == 1
        with own_redis.client() as c:
            assert len(c.function_list()) == 1
    finally:
        await engine.close()
