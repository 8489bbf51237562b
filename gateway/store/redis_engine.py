"""The Redis engine: EVALSHA with transparent NOSCRIPT reload, coalesced pipelines, a time budget and a breaker.

Standalone Redis and Redis Cluster share everything but the transport. Calls
issued in the same event-loop tick are coalesced into one pipeline (one
network round trip); on Cluster, redis-py splits a pipeline per node. On
standalone Redis a pipeline is written in the tick that fills it when a
connection is idle, and a tick that queues :data:`EAGER_BATCH` calls sends
them at once, then starts the next pipeline: Redis works on the first
admissions while the gateway still prepares the rest, instead of every
admission of a busy tick waiting for the whole batch to be prepared and
then for Redis to run all of it. A call
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
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from ..clock import Clock
from ..errors import StoreError, StoreTimeout
from .breaker import CLOSED, BreakerSettings, CircuitBreaker
from .engine import Arg, EngineStats, ScriptCall
from .scripts import Script, load_scripts

__all__ = ["RedisEngine", "EAGER_BATCH"]

# Calls queued in one tick leave in pipelines of at most this many, each as soon as it is full. Measured on the
# full-policy benchmark (64 connections, 5-limit admissions): with one pipeline per tick the gateway waited on
# Redis 23 % of the time; 8 to 24 all kept it busy, 16 was best, 32 let the wait come back.
EAGER_BATCH = 16


class _Slots:
    """At most ``limit`` round trips at once: taken at once when one is free, else awaited in arrival order."""

    __slots__ = ("limit", "busy", "_waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take_now(self) -> bool:
        if self.busy < self.limit and not self._waiters:
            self.busy += 1
            return True
        return False

    async def take(self) -> None:
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as it was cancelled: pass it on
            elif waiter in self._waiters:  # give() drops cancelled waiters it meets
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Hands the slot to the longest waiter, or frees it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.busy -= 1


class _Packer:
    """EVALSHA commands in RESP, each value's bulk string taken from a cache once it has been seen.

    An admission's 38 values are mostly the same call after call (the sha,
    keys, kinds, limits, windows); hiredis.pack_command formats every one
    anew. The cache is keyed by value: ``Arg`` is ``str | int``, and a str
    never equals an int. It is emptied when full, since lease ids and token
    costs keep coming.
    """

    __slots__ = ("_bulk", "_limit")

    def __init__(self, limit: int = 65_536) -> None:
        self._bulk: dict[Any, bytes] = {}
        self._limit = limit

    def evalsha(self, sha: str, call: ScriptCall) -> bytes:
        bulk = self._bulk
        get = bulk.get
        keys, args = call.keys, call.args
        parts = [get(v) or self._remember(v) for v in keys]
        parts += [get(v) or self._remember(v) for v in args]
        head = b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (3 + len(parts), get(sha) or self._remember(sha), get(len(keys)) or self._remember(len(keys)))
        return head + b"".join(parts)

    def _remember(self, value: Any) -> bytes:
        if type(value) is str:
            raw = value.encode()
        elif type(value) is int:
            raw = b"%d" % value
        else:
            raise TypeError(f"a script argument must be str or int, not {type(value).__name__}")
        encoded = b"$%d\r\n%b\r\n" % (len(raw), raw)
        if len(self._bulk) >= self._limit:
            self._bulk.clear()
        self._bulk[value] = encoded
        return encoded


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
        self._lent: set[Any] = set()  # connections written on in _write_now, replies not yet read
        self._slots = _Slots(max_connections)
        self._packer = _Packer()

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
        if len(self._pending) >= EAGER_BATCH:
            self._send_pending()
        elif not self._flush_scheduled:
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
        idle, self._idle = self._idle + list(self._lent), []
        self._lent.clear()
        for conn in idle:
            await conn.disconnect()
        await self._client.aclose()

    # -- coalescing ------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        self._send_pending()

    def _send_pending(self) -> None:
        batch, self._pending = self._pending, []
        # A caller cancelled before its call left (a client that went away): the call is not sent, nothing is consumed.
        batch = [item for item in batch if not item[1].done()]
        if not batch:
            return
        calls = [call for call, _ in batch]
        task = asyncio.ensure_future(self._deliver(batch, calls, self._write_now(calls)))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _write_now(self, calls: list[ScriptCall]) -> Any:
        """Writes ``calls`` on an idle connection now, in this tick; the connection to read their replies from.

        None when that cannot be done (Cluster, scripts not loaded yet, no idle
        connection or no free slot, the breaker not closed, an unknown script):
        the calls then go the asynchronous way, which connects, waits for a
        slot or refuses them.
        """
        if not self._idle or not self._preloaded or self.breaker.state != CLOSED or isinstance(self._client, RedisCluster):
            return None
        conn = self._idle[-1]
        writer = getattr(conn, "_writer", None)
        if writer is None or writer.is_closing() or any(call.script not in self._scripts for call in calls):
            return None
        if not self._slots.take_now():
            return None
        self._idle.pop()
        self._lent.add(conn)
        try:
            writer.write(self._packed(calls))
        except Exception:  # a transport that cannot take it (closed under us): the asynchronous way decides
            self._give_back(conn, False)
            writer.close()
            return None
        self.stats.round_trips += 1
        return conn

    async def _deliver(self, batch: list[tuple[ScriptCall, asyncio.Future[Any]]], calls: list[ScriptCall], sent: Any) -> None:
        try:
            results = await self._send(calls, sent)
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
    async def _send(self, calls: list[ScriptCall], sent: Any = None) -> list[Any]:
        """Each call's reply or StoreError; ``sent``: the connection _write_now already wrote them on (the breaker was closed)."""
        stats = self.stats
        stats.calls += len(calls)
        if sent is None and not self.breaker.allow():
            stats.rejected_open += len(calls)
            stats.failures += len(calls)
            error = StoreError(f"store {self.name} unavailable (circuit open)", code="store_unavailable")
            return [error] * len(calls)
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._execute(calls, sent)
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

    def _packed(self, calls: list[ScriptCall]) -> bytes:
        """EVALSHA of every call, as one pipeline's bytes (standalone Redis; the scripts are known)."""
        packer, scripts = self._packer, self._scripts
        return b"".join([packer.evalsha(scripts[call.script].sha, call) for call in calls])

    def _evalsha(self, call: ScriptCall) -> tuple[Any, ...]:
        return ("EVALSHA", self._scripts[call.script].sha, len(call.keys), *call.keys, *call.args)

    def _eval(self, call: ScriptCall) -> tuple[Any, ...]:
        return ("EVAL", self._scripts[call.script].source, len(call.keys), *call.keys, *call.args)

    async def _execute(self, calls: list[ScriptCall], sent: Any = None) -> list[Any]:
        """Replies in call order (an error reply as its exception); NOSCRIPT answered by one EVAL resend."""
        if sent is not None:
            replies = await self._read(sent, len(calls))
        else:
            for call in calls:
                if call.script not in self._scripts:
                    raise StoreError(f"unknown script {call.script!r}")
            preload = not self._preloaded and not self.single_slot
            if preload:  # the first round trip also loads every script: no NOSCRIPT storm at start
                commands = [("SCRIPT", "LOAD", script.source) for script in self._scripts.values()]
                replies = await self._roundtrip(commands + [self._evalsha(c) for c in calls])
            elif isinstance(self._client, RedisCluster):
                replies = await self._roundtrip([self._evalsha(c) for c in calls])
            else:
                replies = await self._roundtrip_packed(self._packed(calls), len(calls))
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
        """``commands`` in one pipeline; their replies in order."""
        if isinstance(self._client, RedisCluster):
            self.stats.round_trips += 1
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        packed = b"".join([hiredis.pack_command(command) for command in commands])  # C, not redis-py's Python packer
        return await self._roundtrip_packed(packed, len(commands))

    async def _roundtrip_packed(self, packed: bytes, count: int) -> list[Any]:
        """``count`` commands already packed, on a standalone Redis; their replies in order."""
        self.stats.round_trips += 1
        await self._slots.take()
        try:
            conn = self._idle.pop() if self._idle else self._client.connection_pool.make_connection()
        except BaseException:
            self._slots.give()
            raise
        self._lent.add(conn)
        try:
            await conn.send_packed_command(packed, check_health=False)  # connects first if needed
        except BaseException:
            self._give_back(conn, False)
            await conn.disconnect(nowait=True)
            raise
        return await self._read(conn, count)

    async def _read(self, conn: Any, count: int) -> list[Any]:
        """The replies of ``count`` commands written on ``conn``; then the connection and its slot are given back."""
        healthy = False
        try:
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            healthy = True
            return replies
        finally:
            if not self._give_back(conn, healthy):  # a half-read pipeline leaves the socket out of step: never reuse it
                await conn.disconnect(nowait=True)

    def _give_back(self, conn: Any, healthy: bool) -> bool:
        """Frees the round trip's slot; a healthy connection goes back to the idle list (True)."""
        self._lent.discard(conn)
        self._slots.give()
        if healthy and conn.is_connected:
            self._idle.append(conn)
            return True
        return False
