"""The Redis engine: EVALSHA with transparent NOSCRIPT reload, coalesced pipelines, a time budget and a breaker.

Standalone Redis and Redis Cluster share everything but the transport. Calls
issued in the same event-loop tick are coalesced into one pipeline (one
network round trip); on Cluster, redis-py splits a pipeline per node. A call
that finds its script missing (``SCRIPT FLUSH``, a restarted or failed-over
server) is re-sent once with ``EVAL``, which also caches it again: callers
never see ``NOSCRIPT``.

Every round trip gets the store's time budget; when it runs out the call
fails with :class:`StoreTimeout` and the caller applies the limit's fail
mode. Note that a call that timed out may still have been applied by Redis
(for a paused server, when it resumes): the error is conservative for
limits, never an over-admission by Redis itself. Consecutive failures open
the circuit breaker; while open, calls fail at once without waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from ..clock import Clock
from ..errors import StoreError, StoreTimeout
from .breaker import BreakerSettings, CircuitBreaker
from .engine import Arg, EngineStats, ScriptCall
from .scripts import Script, load_scripts

__all__ = ["RedisEngine"]


class RedisEngine:
    """A :class:`ScriptEngine` on a standalone Redis or a Redis Cluster."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        cluster: bool = False,
        timeout: float = 0.05,
        breaker: BreakerSettings = BreakerSettings(),
        coalesce: bool = True,
        max_connections: int = 64,
        scripts: Mapping[str, Script] | None = None,
        name: str = "redis",
    ) -> None:
        self.name = name
        self.single_slot = cluster
        self.stats = EngineStats()
        self.timeout = timeout
        self.breaker = CircuitBreaker(clock, breaker)
        self._scripts = scripts or load_scripts()
        self._coalesce = coalesce
        self._pending: list[tuple[ScriptCall, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._preloaded = False
        options: dict[str, Any] = dict(
            decode_responses=False,
            socket_timeout=None,  # every round trip runs under the store's own budget (see _send)
            socket_connect_timeout=max(0.5, timeout * 5),
            driver_info=None,  # no CLIENT SETINFO round trip on every new connection
            max_connections=max_connections,
        )
        if cluster:
            self._client: Redis | RedisCluster = RedisCluster.from_url(url, **options)
        else:
            self._client = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        # Standalone: our own idle list of redis-py connections (made by the
        # client's pool, so URL, auth and TLS options apply), without the
        # pool's per-checkout lock and bookkeeping on the hot path.
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(max_connections)

    # -- ScriptEngine --------------------------------------------------------
    async def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        call = ScriptCall(script, keys, args)
        if not self._coalesce:
            result = (await self._send([call]))[0]
            if isinstance(result, StoreError):
                raise result
            return result
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((call, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def run_batch(self, calls: Sequence[ScriptCall]) -> list[Any]:
        return await self._send(list(calls))

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()
        await self._client.aclose()

    # -- coalescing ------------------------------------------------------------
    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._flush_scheduled = False
        # A caller cancelled before its call left (a client that went away): the call is not sent, nothing is consumed.
        batch = [item for item in batch if not item[1].done()]
        if not batch:
            return
        task = asyncio.ensure_future(self._deliver(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, batch: list[tuple[ScriptCall, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._send([call for call, _ in batch])
        except BaseException as exc:  # cancelled by close(): nobody must wait forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreError(f"store {self.name} closed"))
            if isinstance(exc, asyncio.CancelledError):
                return
            raise
        for (_, future), result in zip(batch, results):
            if future.done():  # the caller went away
                continue
            if isinstance(result, StoreError):
                future.set_exception(result)
            else:
                future.set_result(result)

    # -- one round trip under budget and breaker --------------------------------
    async def _send(self, calls: list[ScriptCall]) -> list[Any]:
        stats = self.stats
        stats.calls += len(calls)
        if not self.breaker.allow():
            stats.rejected_open += len(calls)
            stats.failures += len(calls)
            error = StoreError(f"store {self.name} unavailable (circuit open)", code="store_unavailable")
            return [error] * len(calls)
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._execute(calls)
        except TimeoutError:
            self.breaker.failure()
            stats.failures += len(calls)
            timeout = StoreTimeout(f"store {self.name} exceeded its {self.timeout * 1000:.0f} ms budget")
            return [timeout] * len(calls)
        except StoreError as exc:  # a call the engine cannot make (unknown script)
            return [exc] * len(calls)
        except (RedisError, OSError) as exc:
            self.breaker.failure()
            stats.failures += len(calls)
            error = StoreError(f"store {self.name} failed: {exc}")
            error.__cause__ = exc
            return [error] * len(calls)
        self.breaker.success()
        out: list[Any] = []
        for call, reply in zip(calls, replies):
            if isinstance(reply, Exception):  # a script error: a bug, not an outage
                stats.failures += 1
                error = StoreError(f"script {call.script} failed on {self.name}: {reply}")
                error.__cause__ = reply
                out.append(error)
            else:
                out.append(reply)
        return out

    def _evalsha(self, call: ScriptCall) -> tuple[Any, ...]:
        return ("EVALSHA", self._scripts[call.script].sha, len(call.keys), *call.keys, *call.args)

    def _eval(self, call: ScriptCall) -> tuple[Any, ...]:
        return ("EVAL", self._scripts[call.script].source, len(call.keys), *call.keys, *call.args)

    async def _execute(self, calls: list[ScriptCall]) -> list[Any]:
        """Replies in call order (an error reply as its exception); NOSCRIPT answered by one EVAL resend."""
        for call in calls:
            if call.script not in self._scripts:
                raise StoreError(f"unknown script {call.script!r}")
        commands = [self._evalsha(c) for c in calls]
        preload = not self._preloaded and not self.single_slot
        if preload:  # the first round trip also loads every script: no NOSCRIPT storm at start
            commands = [("SCRIPT", "LOAD", script.source) for script in self._scripts.values()] + commands
        replies = await self._roundtrip(commands)
        if preload:
            replies = replies[len(self._scripts) :]
            self._preloaded = True
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            self.stats.noscript_reloads += len(missing)
            again = await self._roundtrip([self._eval(calls[i]) for i in missing])
            for i, reply in zip(missing, again):
                replies[i] = reply
        return replies

    async def _roundtrip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        self.stats.round_trips += 1
        if isinstance(self._client, RedisCluster):
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        packed = b"".join([hiredis.pack_command(command) for command in commands])  # C, not redis-py's Python packer
        async with self._slots:
            conn = self._idle.pop() if self._idle else self._client.connection_pool.make_connection()
            healthy = False
            try:
                await conn.send_packed_command(packed, check_health=False)  # connects first if needed
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                healthy = True
                return replies
            finally:
                if healthy and conn.is_connected:
                    self._idle.append(conn)
                else:  # a half-read pipeline leaves the socket out of step: never reuse it
                    await conn.disconnect(nowait=True)
