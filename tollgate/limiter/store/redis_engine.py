"""The Redis engine: FCALL (EVALSHA before Redis 7) with transparent reload, coalesced pipelines, a budget, a breaker.

On Redis 7 and later the scripts are one Functions library
(:func:`~tollgate.limiter.store.scripts.function_library`), loaded once per
server (on Cluster, on every master) and called with ``FCALL``: Redis runs the
shared Lua libraries once, when the library is loaded, instead of on every
call. A server that refuses ``FUNCTION LOAD`` (older than 7, the command
renamed or denied by an ACL) gets ``EVALSHA``, as does a server that later
refuses ``FCALL``. A call that finds the library missing (``FUNCTION FLUSH``,
a restarted or failed-over server) loads it again and is re-sent once, as a
call that finds its script missing is with ``EVAL``: callers never see
either error.

Standalone Redis and Redis Cluster share everything but the transport. On
standalone Redis, redis-py opens each connection (URL, TLS, AUTH, database)
and hands its transport to a :class:`~tollgate.limiter.store.redis_pipe.RedisPipe`,
which reads the replies. Calls issued in the same event-loop tick are
coalesced into one pipeline (one network round trip); on Cluster, redis-py
splits a pipeline per node. On standalone Redis a pipeline is written in the
tick that fills it when a connection is idle, and a tick that queues
:data:`EAGER_BATCH` calls sends them at once, then starts the next pipeline:
Redis works on the first admissions while the gateway still prepares the
rest, instead of every admission of a busy tick waiting for the whole batch
to be prepared and then for Redis to run all of it. Such a pipeline's
callers are answered from the connection's data callback, without a task. A
pipeline's consecutive admissions are one admit.lua call
(lua/admission.lua's batch), each answered as its own call would have been.
A call
that finds its script missing (``SCRIPT FLUSH``, a restarted or failed-over
server) is re-sent once with ``EVAL``, which also caches it again: callers
never see ``NOSCRIPT``.

Two bounds, one for the store and one for the gateway itself (standalone):

* ``timeout`` is the store's time budget, counted from when a pipeline is
  written. When it runs out and the store has sent nothing back, the call
  fails with :class:`StoreTimeout` and the caller applies the limit's fail
  mode. A reply that has arrived but not been read yet (the event loop was
  busy) is not a timeout: the budget is extended until it is read. A call
  that timed out may still be applied by Redis (a paused server, when it
  resumes): conservative for limits, never an over-admission by Redis.
* ``queue_timeout`` bounds the wait for a connection inside the gateway
  (all ``max_connections`` busy). Past it the call fails with
  :class:`StoreOverloaded`: the request gets a 503, never a fail-mode answer,
  since the store was not asked, and the breaker does not count it.

Connections are opened and the scripts loaded by :meth:`RedisEngine.start`,
before the first request; connections dropped later are opened again in the
background after the next successful call. Consecutive failures of calls
that reached Redis (errors, timeouts, refused connections) open the circuit
breaker; while open, calls fail at once (:class:`StoreUnavailable`) without
waiting, and a probe goes through after ``open_seconds``, later and later
while Redis stays down. On Cluster the whole call runs under ``timeout``
(redis-py owns its connections there).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tollgate.circuit_breaker import CLOSED, DEFAULT_SETTINGS, BreakerSettings, CircuitBreaker
from tollgate.clock import Clock
from tollgate.errors import StoreError, StoreOverloaded, StoreTimeout, StoreUnavailable
from tollgate.limiter.store.engine import Arg, EngineStats, ScriptCall
from tollgate.limiter.store.redis_pipe import RedisPipe
from tollgate.limiter.store.scripts import Script, function_library, load_scripts

__all__ = ["ADMIT_BATCH", "EAGER_BATCH", "QUEUE_TIMEOUT", "WARM_CONNECTIONS", "RedisEngine"]

log = logging.getLogger("tollgate.store")

# Calls queued in one tick leave in pipelines of at most this many, each as soon as it is full. Measured on the
# full-policy benchmark (64 connections, 5-limit admissions): with one pipeline per tick the gateway waited on
# Redis 23 % of the time; 8 to 24 all kept it busy, 16 was best, 32 let the wait come back.
EAGER_BATCH = 16
# A pipeline's consecutive admissions go to Redis as one admit.lua call of at most this many (lua/admission.lua's
# batch): Redis reads, dispatches and answers one command, and asks TIME once, instead of once per admission.
# (A pipeline holds at most EAGER_BATCH calls unless run_batch() is given more; the bound keeps one script short.)
ADMIT_BATCH = 64
# Connections opened by start() and kept open: a burst right after start finds them ready instead of connecting.
WARM_CONNECTIONS = 16
# Default bound of the wait for a connection inside the gateway (seconds); then StoreOverloaded (503).
QUEUE_TIMEOUT = 2.0


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

    async def take(self, timeout: float | None = None) -> None:
        """Waits at most ``timeout`` seconds for a slot (TimeoutError past it)."""
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException:  # cancelled, or waited past the bound
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


class _ReplyBudget:
    """The store's time budget for one round trip, from when its pipeline was written.

    Like ``asyncio.timeout`` but, when the time is up, it first looks at the
    connection: a reply that already sits in the socket or in a buffer (the
    event loop ran a timer before the read it had woken) extends the budget
    instead of cancelling the read. Only a store that sent nothing back is
    timed out.
    """

    __slots__ = ("_loop", "_task", "_pipe", "_timeout", "_handle", "_fired", "_cancelling")

    def __init__(self, loop: asyncio.AbstractEventLoop, pipe: RedisPipe, written_at: float, timeout: float) -> None:
        task = asyncio.current_task(loop)  # with its loop: without, asking for the running one costs a getpid()
        assert task is not None
        self._loop = loop
        self._task = task
        self._pipe = pipe
        self._timeout = timeout
        self._fired = False
        self._cancelling = task.cancelling()
        self._handle = loop.call_at(written_at + timeout, self._expire)

    def _expire(self) -> None:
        if self._pipe.answer_waiting():
            self._handle = self._loop.call_at(self._loop.time() + self._timeout, self._expire)
            return
        self._fired = True
        self._task.cancel()

    def cancel(self) -> None:
        self._handle.cancel()

    def timed_out(self) -> bool:
        """After a CancelledError: was it this budget's? (Its cancellation is then taken back.)"""
        return self._fired and self._task.uncancel() <= self._cancelling


class _Waiter:
    """A round trip's replies handed to a future that a coroutine awaits (the asynchronous way)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[list[Any]]) -> None:
        self.future = future

    def replied(self, replies: list[Any]) -> None:
        if not self.future.done():
            self.future.set_result(replies)

    def failed(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class _Trip:
    """A pipeline written in the tick that filled it: its callers answered from the connection's data callback when
    the replies are in, without a task or a coroutine. Its budget is kept by :class:`_Budgets`, extended while a
    reply has arrived but is not read yet (as :class:`_ReplyBudget` does)."""

    __slots__ = ("engine", "batch", "pipe", "shape", "deadline", "over")

    def __init__(
        self,
        engine: RedisEngine,
        batch: list[tuple[ScriptCall, asyncio.Future[Any]]],
        pipe: RedisPipe,
        shape: list[int] | None,
    ) -> None:
        self.engine = engine
        self.batch = batch
        self.pipe = pipe
        self.shape = shape
        self.deadline = 0.0
        self.over = False

    def replied(self, replies: list[Any]) -> None:
        engine = self.engine
        pipe = self.pipe
        if not engine._give_back(pipe, True):  # closed as its replies came: opened again after this success
            engine._cold = True
            pipe.close()
        shape = self.shape
        engine._answered(self._over(), replies if shape is None else _spread(replies, shape))

    def failed(self, exc: BaseException) -> None:
        self.engine._trip_failed(self._over(), self.pipe, exc)

    def _over(self) -> list[tuple[ScriptCall, asyncio.Future[Any]]]:
        """Its calls, which it lets go of: an answered trip waits for the timer to reach it (up to the timeout)."""
        self.over = True
        batch, self.batch = self.batch, []
        return batch

    def expire(self) -> None:
        """Its budget is spent: failed, unless a reply has arrived (then the budget starts again)."""
        pipe = self.pipe
        engine = self.engine
        if pipe.answer_waiting():
            engine._budgets.add(self, pipe.loop, engine.timeout)
            return
        pipe.abandon()
        engine._trip_failed(
            self._over(),
            pipe,
            engine._timed_out(),
        )


_TIMER_RESOLUTION: Final = 0.001


class _Budgets:
    """The budgets of the pipelines on the fast path, kept by one timer.

    They share the store's timeout, so they fall due in the order they were
    written (a budget that starts again goes last, and is due last). The
    timer is armed for the first one still waiting, instead of a timer armed
    and cancelled for every round trip; pipelines answered in time are
    dropped when the timer reaches them.
    """

    __slots__ = ("_due", "_timer", "_sweeping")

    def __init__(self) -> None:
        self._due: deque[_Trip] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._sweeping = False

    def add(self, trip: _Trip, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        trip.deadline = loop.time() + timeout
        self._due.append(trip)
        if self._timer is None and not self._sweeping:
            self._timer = loop.call_at(trip.deadline, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._sweeping = True  # a budget that starts again is added, not armed: the timer is armed below
        due = self._due
        try:
            # Due within the event loop's timer resolution (1 ms): a timer fires on the millisecond, and a deadline
            # a float's rounding above it must not re-arm the timer for the next loop turn again and again.
            now = loop.time() + _TIMER_RESOLUTION
            while due:
                trip = due[0]
                if not trip.over and trip.deadline > now:
                    break
                due.popleft()
                if not trip.over:
                    trip.expire()
        finally:
            self._sweeping = False
            while due and due[0].over:
                due.popleft()
            if due:
                self._timer = loop.call_at(due[0].deadline, self._sweep, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()


# The replies that say the server lacks the library (it was flushed, or the server restarted empty) ...
_NO_FUNCTION = "Function not found"
# ... and those that say it cannot or may not run FCALL at all (older than 7, the command renamed, an ACL).
_NO_FUNCTIONS = ("unknown command", "noperm", "no permissions")
_LIBRARY_EXISTS = "already exists"
_EVALSHA = b"$7\r\nEVALSHA\r\n"
_FCALL = b"$5\r\nFCALL\r\n"
_BATCH = "*"  # admit.lua's first ARGV when the call is a batch of admissions


def _batchable(call: ScriptCall) -> bool:
    """Can ``call`` be one admission of an admit.lua batch? Its limits joined (one value, then the lease id)."""
    return call.script == "admit" and len(call.args) == 2 and len(call.keys) > 0


def _spread(replies: list[Any], shape: list[int]) -> list[Any]:
    """One reply per call from the replies of the commands of ``shape`` (how many calls each carried): a batch's
    list of replies in its calls' places, an error that failed the whole batch in each of them."""
    out: list[Any] = []
    for reply, size in zip(replies, shape):
        if size == 1:
            out.append(reply)
        elif type(reply) is list and len(reply) == size:
            out += reply
        elif isinstance(reply, Exception):
            out += [reply] * size
        else:
            out += [ResponseError(f"an admission batch of {size} was answered with {reply!r:.200}")] * size
    return out


def _says(reply: Any, words: str) -> bool:
    """Is ``reply`` an error reply containing ``words``?"""
    return isinstance(reply, ResponseError) and words in str(reply)


def _refuses_fcall(reply: Any) -> bool:
    """Is ``reply`` the server saying that it does not know FCALL, or that we may not call it?"""
    if not isinstance(reply, ResponseError):
        return False
    text = str(reply).lower()
    return "fcall" in text and any(word in text for word in _NO_FUNCTIONS)


class _Packer:
    """EVALSHA and FCALL commands in RESP, each value's bulk string taken from a cache once it has been seen.

    An admission's 38 values are mostly the same call after call (the sha,
    keys, kinds, limits, windows); hiredis.pack_command formats every one
    anew. Strings and integers have a cache each: a dictionary of str keys
    alone is looked up by CPython's string-only path, where one that mixes
    in ints takes the generic path (with an equality call on every probe
    that meets another key). Each is emptied when full, since lease ids and
    token costs keep coming; a batch's lease ids, seen once, are not kept.
    """

    __slots__ = ("_strs", "_ints", "_limit")

    def __init__(self, limit: int = 65_536) -> None:
        self._strs: dict[str, bytes] = {}
        self._ints: dict[int, bytes] = {}
        self._limit = limit

    def evalsha(self, sha: str, call: ScriptCall) -> bytes:
        return self.command(_EVALSHA, sha, call)

    def fcall(self, function: str, call: ScriptCall) -> bytes:
        return self.command(_FCALL, function, call)

    def batch(self, verb: bytes, target: str, calls: Sequence[ScriptCall]) -> bytes:
        """``verb`` of admit.lua's ``target`` with ``calls`` (joined admissions) as one batch: the calls' keys, each
        KEYS tuple once, then "*" and, per call, its joined limits, its lease id and where its keys start."""
        strs = self._strs
        ints = self._ints
        keys: list[bytes] = []
        argv: list[bytes] = [self._kept(strs, _BATCH)]
        starts: dict[tuple[str, ...], int] = {}  # a KEYS tuple (the limiter's layout's) -> where it starts in KEYS
        for call in calls:
            call_keys = call.keys
            start = starts.get(call_keys) if type(call_keys) is tuple else None
            if start is None:
                start = len(keys)
                for key in call_keys:
                    b = strs.get(key)
                    keys.append(b if b is not None else self._kept(strs, key))
                if type(call_keys) is tuple:
                    starts[call_keys] = start
            limits, lease = call.args
            if type(limits) is str:
                b = strs.get(limits)
                argv.append(b if b is not None else self._kept(strs, limits))
            else:
                argv.append(_bulk(limits))
            argv.append(_bulk(lease))  # a new id every admission
            b = ints.get(start)
            argv.append(b if b is not None else self._kept(ints, start))
        count = len(keys)
        b = ints.get(count)
        head = (
            _array_head(3 + count + len(argv))
            + verb
            + self._kept(strs, target)
            + (b if b is not None else self._kept(ints, count))
        )
        return head + b"".join(keys) + b"".join(argv)

    def command(self, verb: bytes, target: str, call: ScriptCall) -> bytes:
        """``verb`` (EVALSHA or FCALL, as a bulk string) of ``target`` (a sha, a function) with the call's keys and args."""
        strs = self._strs
        ints = self._ints
        keys, args = call.keys, call.args
        n = len(keys)
        b = ints.get(n)
        parts: list[bytes] = [
            _array_head(3 + n + len(args)),
            verb,
            self._kept(strs, target),
            b if b is not None else self._kept(ints, n),
        ]
        for key in keys:
            b = strs.get(key)
            parts.append(b if b is not None else self._kept(strs, key))
        for value in args:
            if type(value) is str:
                b = strs.get(value)
                parts.append(b if b is not None else self._kept(strs, value))
            elif type(value) is int:
                b = ints.get(value)
                parts.append(b if b is not None else self._kept(ints, value))
            else:
                parts.append(_bulk(value))  # refuses it: neither str nor int
        return b"".join(parts)

    def _kept(self, cache: dict[Any, bytes], value: str | int) -> bytes:
        """``value``'s bulk string from ``cache`` (the strings' or the integers'), made and kept there when missing;
        a full cache is emptied first."""
        encoded = cache.get(value)
        if encoded is None:
            encoded = _bulk(value)
            if len(cache) >= self._limit:
                cache.clear()
            cache[value] = encoded
        return encoded


# RESP array headers of the usual lengths, made once.
_ARRAY_HEADS: Final = [b"*%d\r\n" % n for n in range(128)]


def _array_head(count: int) -> bytes:
    return _ARRAY_HEADS[count] if count < 128 else b"*%d\r\n" % count


def _bulk(value: str | int) -> bytes:
    """``value`` as a RESP bulk string (a str as UTF-8, an int in decimal)."""
    if type(value) is str:
        raw = value.encode()
    elif type(value) is int:
        raw = b"%d" % value
    else:
        raise TypeError(f"a script argument must be str or int, not {type(value).__name__}")
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


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
        queue_timeout: float = QUEUE_TIMEOUT,
        breaker: BreakerSettings = DEFAULT_SETTINGS,
        coalesce: bool = True,
        max_connections: int = 64,
        warm_connections: int = WARM_CONNECTIONS,
        scripts: Mapping[str, Script] | None = None,
        name: str = "redis",
    ) -> None:
        self.name = name
        self.single_slot = cluster
        self.stats = EngineStats()
        self.timeout = timeout
        self.queue_timeout = queue_timeout
        self.breaker = CircuitBreaker(clock, breaker)
        self._scripts = scripts or load_scripts()
        self._library = function_library(self._scripts)
        # FCALL (True) or EVALSHA (False); None until the server was asked to load the library.
        self._functions: bool | None = None
        self._coalesce = coalesce
        self._pending: list[tuple[ScriptCall, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._preloaded = False
        options: dict[str, Any] = {
            "decode_responses": False,
            "socket_timeout": None,  # every round trip runs under the store's own budget (see _read)
            "socket_connect_timeout": max(0.5, timeout * 5),
            "driver_info": None,  # no CLIENT SETINFO round trip on every new connection
            # RESP2: a new connection is usable at once, without a HELLO round trip (the scripts' replies are
            # the same in both protocols); a protocol named in the URL wins.
            "protocol": 2,
            "max_connections": max_connections,
        }
        self._cluster = cluster
        if cluster:
            self._client: Redis | RedisCluster = RedisCluster.from_url(url, **options)
        else:
            self._client = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        # Standalone: our own idle list of connections, opened by redis-py (made by the client's pool, so URL,
        # auth and TLS options apply) and then read by a RedisPipe, without the pool's per-checkout lock and
        # bookkeeping on the hot path.
        self._idle: list[RedisPipe] = []
        self._lent: set[RedisPipe] = set()  # connections written on, replies not yet in
        self._slots = _Slots(max_connections)
        self._warm = min(warm_connections, max_connections)
        self._connect_timeout = options["socket_connect_timeout"]
        self._cold = False  # a connection was dropped: open it again after the next successful call
        self._packer = _Packer()
        self._budgets = _Budgets()  # the fast path's round trips' time budgets

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

    async def start(self) -> None:
        """Open the warm connections and load every script, so the first requests wait for neither.

        A store that cannot be reached now is logged, not raised: the gateway
        starts anyway (fail modes answer) and connects on the first calls.
        """
        if self._cluster:  # redis-py's cluster client discovers its nodes here, then every master gets the library
            try:
                async with asyncio.timeout(max(1.0, self.timeout * 10)):
                    await self._load_cluster_library()
            except (StoreError, RedisError, OSError, TimeoutError) as exc:
                log.warning(
                    "store %s: the library could not be loaded at start (%s); the first call loads it", self.name, exc
                )
            return
        opened = await asyncio.gather(
            *(self._open() for _ in range(self._warm - len(self._idle))), return_exceptions=True
        )
        self._idle += [pipe for pipe in opened if not isinstance(pipe, BaseException)]
        failed = [exc for exc in opened if isinstance(exc, BaseException)]
        if failed:
            log.warning(
                "store %s: %d of %d connections could not be opened at start: %s",
                self.name,
                len(failed),
                len(opened),
                failed[0],
            )
        if not self._idle or self._preloaded:
            return
        try:
            async with asyncio.timeout(max(1.0, self.timeout * 10)):
                self._learn(await self._roundtrip(self._loads()))
        except (StoreError, RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "store %s: the scripts could not be loaded at start (%s); the first call loads them", self.name, exc
            )
        else:
            self._preloaded = True

    async def ping(self, timeout: float) -> None:
        """One PING answered within ``timeout`` seconds (a readiness probe, off the request path), else StoreError."""
        try:
            async with asyncio.timeout(timeout):
                await self._roundtrip([("PING",)])
        except TimeoutError:
            raise StoreTimeout(f"store {self.name}: no answer to PING within {timeout:g} s") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"store {self.name} cannot be reached: {exc}") from exc

    async def close(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        for pipe in list(self._lent):  # pipelines written in the tick that filled them: nobody must wait forever
            pipe.fail(StoreError(f"store {self.name} closed"))
        self._budgets.close()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        idle, self._idle = self._idle + list(self._lent), []
        self._lent.clear()
        for pipe in idle:
            pipe.close()
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
        sent = self._write_now(calls)
        if sent is None:
            self._track(asyncio.ensure_future(self._deliver(batch, calls)))
            return
        pipe, shape = sent
        self.stats.calls += len(calls)
        trip = _Trip(self, batch, pipe, shape)
        pipe.expect(len(calls) if shape is None else len(shape), trip)
        self._budgets.add(trip, pipe.loop, self.timeout)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _write_now(self, calls: list[ScriptCall]) -> tuple[RedisPipe, list[int] | None] | None:
        """Writes ``calls`` on an idle connection now, in this tick; the connection their replies will come on and
        the shape of what was written (see :meth:`_packed`).

        None when that cannot be done (Cluster, scripts not loaded yet, no idle
        connection or no free slot, the breaker not closed, an unknown script):
        the calls then go the asynchronous way, which connects, waits for a
        slot or refuses them.
        """
        if not self._idle or not self._preloaded or self.breaker.state != CLOSED or self._cluster:
            return None
        pipe = self._idle[-1]
        if not pipe.usable() or any(call.script not in self._scripts for call in calls):
            return None
        if not self._slots.take_now():
            return None
        self._idle.pop()
        self._lent.add(pipe)
        try:
            packed, shape = self._packed(calls)
            pipe.write(packed)
        except Exception:  # a transport that cannot take it (closed under us): the asynchronous way decides
            self._give_back(pipe, False)
            pipe.close()
            return None
        self.stats.round_trips += 1
        return pipe, shape

    async def _deliver(
        self,
        batch: list[tuple[ScriptCall, asyncio.Future[Any]]],
        calls: list[ScriptCall],
        replies: list[Any] | None = None,
    ) -> None:
        """The replies of ``batch``'s calls handed to its callers; ``replies``: what Redis already answered to them
        on the fast path (see :meth:`_answered`)."""
        try:
            results = await self._send(calls, replies)
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

    def _answered(self, batch: list[tuple[ScriptCall, asyncio.Future[Any]]], replies: list[Any]) -> None:
        """A pipeline written in the tick that filled it is answered: its callers get their replies now; a reply
        that is an error (a missing script or library, a script that failed) goes the asynchronous way, which
        loads and resends or says which script failed."""
        for reply in replies:
            if isinstance(reply, Exception):
                self._track(asyncio.ensure_future(self._deliver(batch, [call for call, _ in batch], replies)))
                return
        self._succeeded()
        for (_, future), reply in zip(batch, replies):
            if not future.done():  # else the caller went away
                future.set_result(reply)

    def _trip_failed(
        self, batch: list[tuple[ScriptCall, asyncio.Future[Any]]], pipe: RedisPipe, exc: BaseException
    ) -> None:
        """A pipeline written in the tick that filled it got no replies (``exc`` says why): its connection is not
        reused; each caller gets the StoreError that :meth:`_send` gives."""
        self._give_back(pipe, False)
        self._cold = True
        pipe.close()
        if isinstance(exc, StoreError):  # a timeout, or the engine closed
            error = exc
            if isinstance(exc, StoreTimeout):
                self.breaker.failure()
                self.stats.failures += len(batch)
        else:  # the connection was lost, or its replies could not be read
            self.breaker.failure()
            self.stats.failures += len(batch)
            error = self._failed(exc)
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    # -- one round trip under budget and breaker --------------------------------
    def _succeeded(self) -> None:
        """A round trip was answered: the breaker hears of it, and connections dropped before are opened again."""
        self.breaker.success()
        if self._cold:
            self._rewarm()

    def _timed_out(self) -> StoreTimeout:
        """What the calls of a round trip get when the store sent nothing back within its budget."""
        return StoreTimeout(f"store {self.name} sent nothing back within its {self.timeout * 1000:.0f} ms budget")

    def _failed(self, exc: BaseException) -> StoreError:
        """What the calls of a round trip get when its connection failed with ``exc``."""
        error = StoreError(f"store {self.name} failed: {exc}")
        error.__cause__ = exc
        return error

    async def _send(self, calls: list[ScriptCall], replies: list[Any] | None = None) -> list[Any]:
        """Each call's reply or StoreError; ``replies``: what Redis answered them on the fast path (the breaker was
        closed), errors among them."""
        stats = self.stats
        breaker = self.breaker
        if replies is None:  # (the fast path counted its calls when it wrote them)
            stats.calls += len(calls)
            if not breaker.acquire():
                stats.rejected_open += len(calls)
                stats.failures += len(calls)
                error: StoreError = StoreUnavailable(f"store {self.name} unavailable (circuit open)")
                return [error] * len(calls)
        try:
            if self._cluster:
                async with asyncio.timeout(self.timeout):
                    replies = await self._execute(calls)
            else:
                replies = await self._execute(calls, replies)
        except TimeoutError:
            breaker.failure()
            stats.failures += len(calls)
            error = self._timed_out()
            return [error] * len(calls)
        except StoreOverloaded as exc:  # waited in our own queue: the store was not asked, the breaker not told
            breaker.abandon()
            stats.overloaded += len(calls)
            return [exc] * len(calls)
        except StoreUnavailable as exc:  # could not connect
            breaker.failure()
            stats.failures += len(calls)
            return [exc] * len(calls)
        except StoreError as exc:  # a call the engine cannot make (unknown script)
            breaker.abandon()
            return [exc] * len(calls)
        except (RedisError, OSError) as exc:
            breaker.failure()
            stats.failures += len(calls)
            error = self._failed(exc)
            return [error] * len(calls)
        self._succeeded()
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

    def _packed(self, calls: list[ScriptCall]) -> tuple[bytes, list[int] | None]:
        """FCALL (or EVALSHA) of every call, as one pipeline's bytes (standalone Redis; the scripts are known), and
        its shape: how many calls each command carries, None when one each. A run of consecutive admissions (at
        most ADMIT_BATCH) is one admit.lua batch, answered as the run's calls would have been one by one."""
        packer = self._packer
        if self._functions:
            verb = _FCALL
            functions = self._library.functions
            targets = {name: functions[name] for name in {call.script for call in calls}}
        else:
            verb = _EVALSHA
            targets = {name: self._scripts[name].sha for name in {call.script for call in calls}}
        parts: list[bytes] = []
        shape: list[int] | None = None
        i, count = 0, len(calls)
        while i < count:
            call = calls[i]
            if _batchable(call):
                end = i + 1
                while end < count and end - i < ADMIT_BATCH and _batchable(calls[end]):
                    end += 1
                if end - i > 1:
                    if shape is None:
                        shape = [1] * i
                    parts.append(packer.batch(verb, targets["admit"], calls[i:end]))
                    shape.append(end - i)
                    i = end
                    continue
            parts.append(packer.command(verb, targets[call.script], call))
            if shape is not None:
                shape.append(1)
            i += 1
        return b"".join(parts), shape

    def _loads(self) -> list[tuple[Any, ...]]:
        """Load the library (Redis >= 7) and every script (the fallback): the library's reply comes first."""
        return [("FUNCTION", "LOAD", self._library.code)] + [
            ("SCRIPT", "LOAD", script.source) for script in self._scripts.values()
        ]

    def _learn(self, replies: list[Any]) -> None:
        """Sets FCALL or EVALSHA from the replies of :meth:`_loads` (or of FUNCTION LOAD alone)."""
        loaded = replies[0]
        functions = not isinstance(loaded, Exception) or _says(loaded, _LIBRARY_EXISTS)
        if self._functions is not False and not functions:
            log.warning("store %s: no Redis Functions (%s): the scripts are called with EVALSHA", self.name, loaded)
        self._functions = functions
        self._preloaded = True

    async def _load_cluster_library(self) -> None:
        """FUNCTION LOAD on every master of the Cluster (REPLACE: a master that has it keeps the same code)."""
        client = self._client
        assert isinstance(client, RedisCluster)
        self.stats.round_trips += 1
        try:
            await client.execute_command(
                "FUNCTION", "LOAD", "REPLACE", self._library.code, target_nodes=RedisCluster.PRIMARIES
            )
        except ResponseError as exc:
            self._learn([exc])
        else:
            self._learn([b"ok"])

    def _call(self, call: ScriptCall) -> tuple[Any, ...]:
        if self._functions:
            return ("FCALL", self._library.functions[call.script], len(call.keys), *call.keys, *call.args)
        return ("EVALSHA", self._scripts[call.script].sha, len(call.keys), *call.keys, *call.args)

    def _eval(self, call: ScriptCall) -> tuple[Any, ...]:
        return ("EVAL", self._scripts[call.script].source, len(call.keys), *call.keys, *call.args)

    async def _execute(self, calls: list[ScriptCall], replies: list[Any] | None = None) -> list[Any]:
        """Replies in call order (an error reply as its exception); ``replies``: those already in (the fast path).

        A missing script is answered by one EVAL resend, a missing library by
        loading it and one FCALL resend (then EVAL, if it went missing again in
        between), a server that refuses FCALL by one EVAL resend (and EVALSHA
        from then on).
        """
        if replies is None:
            for call in calls:
                if call.script not in self._scripts:
                    raise StoreError(f"unknown script {call.script!r}")
            preload = not self._preloaded and not self.single_slot
            if preload:  # start() could not load the scripts: the first round trip does, no NOSCRIPT storm
                loads = self._loads()
                replies = await self._roundtrip(loads + [self._call(c) for c in calls])
                self._learn(replies)
                replies = replies[len(loads) :]
            elif self._cluster:
                if self._functions is None:
                    await self._load_cluster_library()
                replies = await self._roundtrip([self._call(c) for c in calls])
            else:
                packed, shape = self._packed(calls)
                replies = await self._roundtrip_packed(packed, len(calls), shape)
        if any(isinstance(r, ResponseError) for r in replies):
            await self._resend(calls, replies)
        return replies

    async def _resend(self, calls: list[ScriptCall], replies: list[Any]) -> None:
        """Calls whose script or library the server lacked, sent again once; their replies replace the errors."""
        no_library = [i for i, r in enumerate(replies) if _says(r, _NO_FUNCTION)]
        if no_library:
            self.stats.noscript_reloads += len(no_library)
            if self._cluster:  # a master that lost it (restarted, a new one): every master gets it again
                await self._load_cluster_library()
                again = await self._roundtrip([self._call(calls[i]) for i in no_library])
            else:
                again = await self._roundtrip(
                    [("FUNCTION", "LOAD", self._library.code)] + [self._call(calls[i]) for i in no_library]
                )
                self._learn(again)
                again = again[1:]
            for i, reply in zip(no_library, again):
                replies[i] = reply
        refused = [i for i, r in enumerate(replies) if self._functions and _refuses_fcall(r)]
        if refused:  # the server no longer runs functions (a failover to an older one): EVALSHA from now on
            log.warning(
                "store %s: FCALL refused (%s): the scripts are called with EVALSHA", self.name, replies[refused[0]]
            )
            self._functions = False
        # A library flushed again between its load and the resend (FUNCTION FLUSH from another client lands between
        # a pipeline's commands) is not waited for a third time: EVAL carries the script itself.
        missing = [
            i
            for i, r in enumerate(replies)
            if isinstance(r, NoScriptError) or i in refused or (i in no_library and _says(r, _NO_FUNCTION))
        ]
        if missing:
            self.stats.noscript_reloads += len(missing)
            again = await self._roundtrip([self._eval(calls[i]) for i in missing])
            for i, reply in zip(missing, again):
                replies[i] = reply

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

    async def _roundtrip_packed(self, packed: bytes, count: int, shape: list[int] | None = None) -> list[Any]:
        """``count`` calls already packed (``shape``: as :meth:`_packed` says), on a standalone Redis; their
        replies in order.

        Waiting for a slot is the gateway's own queue (``queue_timeout``, then
        StoreOverloaded); connecting is bounded by the connect timeout
        (StoreUnavailable); the store's budget starts when the pipeline is written.
        """
        self.stats.round_trips += 1
        try:
            await self._slots.take(self.queue_timeout)
        except TimeoutError:
            raise StoreOverloaded(
                f"store {self.name}: no connection free within {self.queue_timeout:g} s (all {self._slots.limit} busy)"
            ) from None
        pipe = None
        while self._idle and pipe is None:
            pipe = self._idle.pop()
            if not pipe.usable():  # closed by the store while idle
                pipe.close()
                self._cold = True
                pipe = None
        if pipe is None:
            try:
                pipe = await self._open()
            except BaseException:
                self._slots.give()
                raise
        self._lent.add(pipe)
        return await self._read(pipe, count, packed, shape)

    def _new_connection(self) -> Any:
        """A new connection, not connected yet, made by the standalone client's pool (its URL, auth, TLS)."""
        client = self._client
        assert isinstance(client, Redis)  # standalone only: on Cluster, redis-py owns the connections
        return client.connection_pool.make_connection()  # type: ignore[no-untyped-call]  # not annotated by redis-py

    async def _open(self) -> RedisPipe:
        """A new connection, its handshake done (within the connect timeout) and its replies read by a RedisPipe;
        StoreUnavailable when the store cannot be reached."""
        conn = self._new_connection()
        try:
            async with asyncio.timeout(self._connect_timeout):  # the handshake (AUTH, SELECT, HELLO) included
                await conn.connect()
        except (RedisError, OSError, TimeoutError) as exc:
            await conn.disconnect(nowait=True)
            raise StoreUnavailable(f"store {self.name} cannot be reached: {exc or type(exc).__name__}") from exc
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        pipe = RedisPipe.adopt(conn)
        if pipe is None:
            await conn.disconnect(nowait=True)
            raise StoreUnavailable(f"store {self.name}: a new connection held unread bytes after its handshake")
        return pipe

    async def _read(self, pipe: RedisPipe, count: int, packed: bytes, shape: list[int] | None = None) -> list[Any]:
        """The replies of ``count`` calls (``shape``: how many calls each command carried, None when one each),
        ``packed``, written on ``pipe`` now and awaited within the store's budget; then the connection and its slot
        are given back."""
        healthy = False
        loop = pipe.loop
        waiter: asyncio.Future[list[Any]] = loop.create_future()
        pipe.expect(count if shape is None else len(shape), _Waiter(waiter))
        budget = _ReplyBudget(loop, pipe, loop.time(), self.timeout)
        try:
            pipe.write(packed)
            replies = await waiter
            healthy = True
            return replies if shape is None else _spread(replies, shape)
        except asyncio.CancelledError:
            if budget.timed_out():
                raise TimeoutError from None
            raise
        finally:
            budget.cancel()
            if not self._give_back(pipe, healthy):  # a half-read pipeline leaves the socket out of step: never reuse it
                self._cold = True
                pipe.abandon()

    def _give_back(self, pipe: RedisPipe, healthy: bool) -> bool:
        """Frees the round trip's slot; a healthy connection goes back to the idle list (True)."""
        self._lent.discard(pipe)
        self._slots.give()
        if healthy and pipe.usable():
            self._idle.append(pipe)
            return True
        return False

    # -- keeping connections warm -------------------------------------------------
    def _rewarm(self) -> None:
        """The store answers again after connections were dropped: open them again in the background."""
        self._cold = False
        missing = self._warm - len(self._idle) - len(self._lent)
        if missing > 0:
            self._track(asyncio.ensure_future(self._open_idle(missing)))

    async def _open_idle(self, count: int) -> None:
        for pipe in await asyncio.gather(*(self._open() for _ in range(count)), return_exceptions=True):
            if not isinstance(pipe, BaseException):
                self._idle.append(pipe)
