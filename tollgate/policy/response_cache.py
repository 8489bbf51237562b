"""The exact-match response cache: an in-process LRU bounded by bytes, then Redis, with invalidation by generation.

An entry is one complete 200 answer (:class:`CachedAnswer`): a JSON body, or
the SSE bytes a stream sent its client, with the model that served it and its
usage. Its key (made by the pipeline's cache stage, tollgate/pipeline/cache.py)
is a digest of the normalized request, kept under the tenant's scope (or one
shared scope when ``cache.shared_across_tenants``) and under the current
*generations* of that scope, of its model and of the whole cache.

Two levels. The in-process level is an LRU bounded by ``cache.max_bytes``;
each entry expires by the injected clock. When the limiter's default store is
a Redis (standalone or Cluster), entries are also written there (``SET`` with
``PX``: Redis drops them at their TTL) under
``<prefix>:rc:{<scope>}:<generations>:<digest>`` (the scope is the hash tag,
so a tenant's entries share a slot), and a local miss reads Redis within
``cache.remote_timeout`` (slower: a miss). On the embedded store there is
only the in-process level.

Invalidation (by tenant, model or all, from the admin API) increments a
generation: in this process at once (its matching local entries are dropped),
and in the hash ``<prefix>:rc:generations`` in Redis. Every process reads
that hash every ``cache.generation_poll`` (1 s by default): a key is made with
the generations a process knows, so once it has read the new ones it neither
reads nor writes an entry of the old ones, and drops its local copies of them.
**A cleared entry may thus still answer in another process for at most
``generation_poll`` plus one Redis round trip** (while Redis does not answer,
a process keeps the generations it last read: entries then expire by their
TTL). The hash is given a TTL longer than any entry's, renewed at each
invalidation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from tollgate.background import BackgroundTask
from tollgate.clock import Clock
from tollgate.config.cache import ResponseCacheConfig
from tollgate.config.store import StoreConfig

__all__ = [
    "CACHE_HEADER",
    "SHARED_SCOPE",
    "CacheHit",
    "CachedAnswer",
    "Generations",
    "LocalLevel",
    "ResponseCache",
    "Tape",
]

log = logging.getLogger("tollgate.cache")

CACHE_HEADER = "x-tollgate-cache"
"""The request header (``use``, ``no-store``) and the answer header (``hit``, ``miss``)."""
SHARED_SCOPE = "*"
"""The scope of every entry when ``cache.shared_across_tenants`` is on."""
# Per-entry bookkeeping counted against max_bytes beside its key and body.
_OVERHEAD = 200
# The generations hash outlives any entry by this much (seconds).
_GENERATIONS_MARGIN = 86_400.0


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One stored answer: ``sse`` (the stream's bytes as the client got them) or ``json`` (the body)."""

    shape: str
    content_type: str
    model_served: str
    body: bytes
    prompt_tokens: int
    completion_tokens: int

    def encode(self, expires_ms: int) -> bytes:
        """Its bytes in Redis: one JSON line of metadata (with its expiry, epoch ms), then the body."""
        meta = (
            self.shape,
            self.content_type,
            self.model_served,
            self.prompt_tokens,
            self.completion_tokens,
            expires_ms,
        )
        return orjson.dumps(meta) + b"\n" + self.body

    @staticmethod
    def decode(raw: bytes) -> tuple[CachedAnswer, int] | None:
        """The answer and its expiry (epoch ms) from :meth:`encode`'s bytes; None for anything else."""
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            shape, content_type, model, prompt, completion, expires_ms = orjson.loads(head)
            return CachedAnswer(str(shape), str(content_type), str(model), body, int(prompt), int(completion)), int(
                expires_ms
            )
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None


class CacheHit:
    """What accounting keeps of a request answered from the cache: the tokens of the answer it replayed (what an
    upstream did not have to produce again) and what the hit is billed, in nanos of the pricing currency."""

    __slots__ = ("prompt_tokens", "completion_tokens", "charge_nanos")

    def __init__(self, prompt_tokens: int, completion_tokens: int, charge_nanos: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.charge_nanos = charge_nanos


class Tape:
    """The bytes a stream sent its client, recorded by the relay for the cache; past ``limit`` it stops recording."""

    __slots__ = ("chunks", "size", "limit", "overflowed")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.overflowed = False

    def add(self, data: bytes) -> None:
        if self.overflowed:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflowed = True
            self.chunks = []
            return
        self.chunks.append(data)


class _Slot:
    __slots__ = ("answer", "expires", "size", "scope", "model")

    def __init__(self, answer: CachedAnswer, expires: float, size: int, scope: str, model: str) -> None:
        self.answer = answer
        self.expires = expires  # monotonic seconds
        self.size = size
        self.scope = scope
        self.model = model


class LocalLevel:
    """An LRU of answers bounded by bytes (keys and bodies, plus a fixed overhead each); expiry by monotonic time."""

    __slots__ = ("max_bytes", "size", "_slots")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str, now: float) -> CachedAnswer | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires <= now:
            self._drop(key)
            return None
        self._slots.move_to_end(key)
        return slot.answer

    def put(self, key: str, answer: CachedAnswer, expires: float, scope: str, model: str) -> bool:
        """Keep ``answer`` until ``expires``; False when it alone would not fit."""
        size = len(key) + len(answer.body) + _OVERHEAD
        if size > self.max_bytes:
            return False
        if key in self._slots:
            self._drop(key)
        self._slots[key] = _Slot(answer, expires, size, scope, model)
        self.size += size
        while self.size > self.max_bytes:
            self._drop(next(iter(self._slots)))
        return True

    def drop_matching(self, scope: str | None, model: str | None) -> int:
        """Drop the entries of ``scope`` (a tenant, or the shared scope), of ``model``, or (both None) every one."""
        if scope is None and model is None:
            n = len(self._slots)
            self._slots.clear()
            self.size = 0
            return n
        doomed = [
            k
            for k, s in self._slots.items()
            if (scope is None or s.scope == scope or s.scope == SHARED_SCOPE) and (model is None or s.model == model)
        ]
        for k in doomed:
            self._drop(k)
        return len(doomed)

    def _drop(self, key: str) -> None:
        slot = self._slots.pop(key)
        self.size -= slot.size


class Generations:
    """The invalidation generations this process knows: of the whole cache, per scope, per model (absent: 0)."""

    __slots__ = ("every", "scopes", "models")

    def __init__(self) -> None:
        self.every = 0
        self.scopes: dict[str, int] = {}
        self.models: dict[str, int] = {}

    def tag(self, scope: str, model: str) -> str:
        """The generations a key of ``scope`` and ``model`` is made under."""
        return f"{self.every}.{self.scopes.get(scope, 0)}.{self.models.get(model, 0)}"

    def bump(self, scope: str | None, model: str | None) -> None:
        if scope is None and model is None:
            self.every += 1
        if scope is not None:
            self.scopes[scope] = self.scopes.get(scope, 0) + 1
        if model is not None:
            self.models[model] = self.models.get(model, 0) + 1

    def merge(self, fields: dict[Any, Any]) -> list[tuple[str | None, str | None]]:
        """Take the generations read from Redis (only ever forward); what moved, as (scope, model) pairs to drop."""
        moved: list[tuple[str | None, str | None]] = []
        for raw_name, raw_value in fields.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            value = int(raw_value)
            if name == "all":
                if value > self.every:
                    self.every = value
                    moved.append((None, None))
            elif name.startswith("t:"):
                scope = name[2:]
                if value > self.scopes.get(scope, 0):
                    self.scopes[scope] = value
                    moved.append((scope, None))
            elif name.startswith("m:"):
                model = name[2:]
                if value > self.models.get(model, 0):
                    self.models[model] = value
                    moved.append((None, model))
        return moved


class ResponseCache:
    """The cache of one gateway process: both levels, the generations, the Redis client when there is one."""

    def __init__(self, config: ResponseCacheConfig, store: StoreConfig, clock: Clock, *, redis: Any = None) -> None:
        self.config = config
        self.clock = clock
        self.local = LocalLevel(config.max_bytes)
        self.generations = Generations()
        self._prefix = f"{store.key_prefix}:rc"
        self._generations_key = f"{self._prefix}:generations"
        self.redis = redis if redis is not None else _redis_of(store)
        self._writes: set[asyncio.Task[None]] = set()
        self._poller = BackgroundTask("cache-generations", self._poll)
        self.remote_errors = 0

    # -- keys ------------------------------------------------------------------
    def scope_of(self, tenant: str) -> str:
        return SHARED_SCOPE if self.config.shared_across_tenants else tenant

    def key(self, scope: str, model: str, digest: str) -> str:
        """The key of an entry under the generations known now (also its Redis key)."""
        return f"{self._prefix}:{{{scope}}}:{self.generations.tag(scope, model)}:{digest}"

    # -- reads and writes ----------------------------------------------------------
    async def get(self, key: str, scope: str, model: str) -> CachedAnswer | None:
        """The answer stored under ``key`` (of ``scope`` and the requested ``model``): from this process, else from
        Redis (then kept here for what is left of its TTL)."""
        found = self.local.get(key, self.clock.monotonic())
        if found is not None or self.redis is None:
            return found
        try:
            async with asyncio.timeout(self.config.remote_timeout):
                raw = await self.redis.get(key)
        except Exception as exc:  # Redis down or slow: a miss, never the request's failure
            self.remote_errors += 1
            log.debug("response cache: reading Redis failed (%s)", type(exc).__name__)
            return None
        if raw is None:
            return None
        decoded = CachedAnswer.decode(raw)
        if decoded is None:
            return None
        answer, expires_ms = decoded
        left = expires_ms / 1000.0 - self.clock.time()
        if left <= 0:
            return None
        self.local.put(key, answer, self.clock.monotonic() + left, scope, model)
        return answer

    def put(self, key: str, scope: str, model: str, answer: CachedAnswer, ttl: float) -> bool:
        """Store ``answer`` for ``ttl`` seconds here, and in Redis in the background (never waited for); False when
        it does not fit in this process's level (then it is stored nowhere)."""
        if not self.local.put(key, answer, self.clock.monotonic() + ttl, scope, model):
            return False
        if self.redis is not None:
            expires_ms = int((self.clock.time() + ttl) * 1000)
            task = asyncio.get_running_loop().create_task(self._write(key, answer.encode(expires_ms), int(ttl * 1000)))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return True

    async def _write(self, key: str, value: bytes, ttl_ms: int) -> None:
        try:
            await self.redis.set(key, value, px=max(1, ttl_ms))
        except Exception as exc:
            self.remote_errors += 1
            log.debug("response cache: writing Redis failed (%s)", type(exc).__name__)

    # -- invalidation -------------------------------------------------------------
    async def invalidate(self, tenant: str | None = None, model: str | None = None) -> int:
        """Clear the entries of ``tenant``, of the requested ``model``, of both (the tenant's and the model's: a
        superset of those of that tenant and model), or, neither given, every entry.

        Takes effect here at once and, through Redis, in every other process within ``generation_poll``; returns
        how many local entries were dropped. Raises what Redis raised when it could not record the invalidation.
        """
        scopes: list[str | None] = [None]
        if tenant is not None:
            scopes = [tenant, SHARED_SCOPE] if self.config.shared_across_tenants else [tenant]
        dropped = 0
        for scope in scopes:
            self.generations.bump(scope, model)
            dropped += self.local.drop_matching(scope, model)
        if self.redis is not None:
            fields = [f"t:{s}" for s in scopes if s is not None] + ([f"m:{model}"] if model is not None else [])
            if not fields:
                fields = ["all"]
            pipe = self.redis.pipeline(transaction=False)
            for f in fields:
                pipe.hincrby(self._generations_key, f, 1)
            pipe.expire(self._generations_key, int(self._longest_ttl() + _GENERATIONS_MARGIN))
            replies = await pipe.execute()
            # Redis' counts are the fleet's: take them (they may be ahead of this process's own).
            self._take(dict(zip(fields, replies[: len(fields)])))
        return dropped

    def _longest_ttl(self) -> float:
        c = self.config
        return max([c.ttl, *c.model_ttl.values(), *c.namespace_ttl.values()])

    def _take(self, fields: dict[Any, Any]) -> None:
        for scope, model in self.generations.merge(fields):
            self.local.drop_matching(scope, model)

    async def refresh(self) -> None:
        """Read the fleet's generations from Redis now (the poller does it every ``generation_poll``)."""
        if self.redis is not None:
            self._take(await self.redis.hgetall(self._generations_key))

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # keep the generations known; entries still expire by their TTL
                self.remote_errors += 1
                log.debug("response cache: reading the generations failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.config.generation_poll)

    # -- life ----------------------------------------------------------------------
    def configure(self, config: ResponseCacheConfig) -> None:
        """A new config version's ``cache:`` section (its bound applies from the next store on)."""
        self.config = config
        self.local.max_bytes = config.max_bytes

    async def start(self) -> None:
        """Read the fleet's generations now (before this process answers from the cache), then in the background
        every ``generation_poll`` (with a Redis; once started, another call does nothing)."""
        if self.redis is None or self._poller.running:
            return
        try:
            async with asyncio.timeout(max(self.config.remote_timeout, 1.0)):
                await self.refresh()
        except Exception as exc:  # Redis not there yet: the poller keeps trying
            log.warning("response cache: cannot read the invalidation generations from Redis yet (%s)", exc)
        self._poller.start()

    async def close(self) -> None:
        await self._poller.stop()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()


def _redis_of(store: StoreConfig) -> Any:
    """A client of the limiter's default store when it is a Redis, else None (the in-process level alone)."""
    endpoint = store.default_store
    if endpoint.backend != "redis" or endpoint.url is None:
        return None
    if endpoint.cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(endpoint.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    from redis.asyncio import Redis

    return Redis.from_url(endpoint.url, socket_timeout=2.0, socket_connect_timeout=2.0)
