"""Store configuration: one or several named limiter stores, routing by plan or tenant, breaker, fail-mode sizing.

Short form, one store (named ``default``)::

    store:
      backend: redis                 # embedded (default) | redis
      url: redis://127.0.0.1:6379/0
      cluster: false
      timeout: 50ms                  # time budget of one store call from when it is written, then the limit's fail mode
      queue_timeout: 2s              # wait for a free connection inside the gateway, then 503 overloaded
      max_connections: 64
      breaker: {failures: 3, open_for: 100ms, open_for_max: 2s}
      instances: 4                   # gateway processes sharing the limits (divides them in `local` mode)

Several stores, a large tenant on its own Redis::

    store:
      stores:
        shared: {backend: redis, url: "redis://10.0.0.5:6379/0"}
        dedicated-acme: {backend: redis, url: "redis://10.0.0.9:6379/0", cluster: true, timeout: 30ms}
      default: shared
      routing:
        plans: {enterprise: dedicated-acme}
        tenants: {acme: dedicated-acme}
      instances: 4
      key_prefix: tg
      local_cache: 10000             # keys remembered as over their limit (0 turns the cache off)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, Strict

from tollgate.config.validation import Doc, Found, Problems, check, section, validate
from tollgate.config.values import Bool, Duration, FrozenMap, OptionalDuration, Str, matching

__all__ = [
    "STORE_BACKENDS",
    "BreakerConfig",
    "BreakerDoc",
    "StoreConfig",
    "StoreDoc",
    "StoreEndpoint",
    "StoreEndpointDoc",
    "StoreRouting",
    "build_store",
    "parse_store",
]

STORE_BACKENDS = ("embedded", "redis")
STORE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
KEY_PREFIX = r"[A-Za-z0-9_.-]{1,32}"
_ENDPOINT_KEYS = ("backend", "url", "cluster", "timeout", "queue_timeout", "breaker", "coalesce", "max_connections")
MAX_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """``failures`` failed calls in a row open the circuit; after ``open_for`` seconds one probe may pass.

    Each failed probe doubles the time the circuit stays open, up to
    ``open_for_max``; a call that succeeds brings it back to ``open_for``.
    """

    failures: int = 3
    open_for: float = 0.1
    open_for_max: float = 2.0


@dataclass(frozen=True, slots=True)
class StoreEndpoint:
    """One named store."""

    name: str = "default"
    backend: str = "embedded"
    url: str | None = None
    cluster: bool = False
    # Time budget of one store call (seconds), from when it is written, before the limit's fail mode applies.
    timeout: float = 0.05
    # How long a call may wait inside the gateway for a free connection (seconds); then 503 overloaded.
    queue_timeout: float = 2.0
    breaker: BreakerConfig = BreakerConfig()
    # Coalesce the calls issued in one event-loop tick into one pipeline.
    coalesce: bool = True
    max_connections: int = 64


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@section
@dataclass(frozen=True, slots=True)
class StoreRouting:
    """Which store holds a tenant's counters: by tenant first, then by plan, else the default store."""

    plans: FrozenMap[Str] = field(default_factory=_empty)
    """Plan name -> store name."""
    tenants: FrozenMap[Str] = field(default_factory=_empty)
    """Tenant id -> store name."""


def _one_store() -> Mapping[str, StoreEndpoint]:
    return MappingProxyType({"default": StoreEndpoint()})


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where limiter state lives; the embedded store alone by default."""

    stores: Mapping[str, StoreEndpoint] = field(default_factory=_one_store)
    default: str = "default"
    routing: StoreRouting = field(default_factory=StoreRouting)
    # Gateway processes sharing the limits: a limit in `local` fail mode is divided by this.
    instances: int = 1
    key_prefix: str = "tg"
    # Keys remembered as over their limit (refused without a store call); 0 turns it off.
    local_cache: int = 10_000

    @property
    def default_store(self) -> StoreEndpoint:
        return self.stores[self.default]

    # The single-store view older code reads.
    @property
    def backend(self) -> str:
        return self.default_store.backend

    @property
    def url(self) -> str | None:
        return self.default_store.url

    @property
    def cluster(self) -> bool:
        return self.default_store.cluster

    @property
    def timeout(self) -> float:
        return self.default_store.timeout


_BREAKER = BreakerConfig()


class BreakerDoc(Doc):
    """After ``failures`` failed store calls in a row, answer from the fail modes at once; probe the store again
    after open_for, doubling the wait after each failed probe up to open_for_max; the first call that succeeds
    closes it and resets the wait."""

    failures: Annotated[int, Strict(), Field(ge=1, le=1000)] = 3
    open_for: Duration = 0.1
    open_for_max: OptionalDuration = None
    """Default: 2s, or open_for when that is longer (no backoff)."""

    @check
    def open_for_max_covers_open_for(self) -> Found:
        if self.open_for_max is not None and self.open_for_max < self.open_for:
            yield "open_for_max", "must be at least open_for"


class StoreEndpointDoc(Doc):
    """One store: the in-process engine, or a Redis (standalone or Cluster)."""

    backend: Literal["embedded", "redis"] = "embedded"
    url: Str | None = None
    """redis://, rediss:// or unix:// URL; required when backend is redis."""
    cluster: Bool = False
    """Redis Cluster: every key of one tenant shares a hash slot ({tenant} tag)."""
    timeout: Duration = 0.05
    """Time budget of one store call, from when it is written to Redis, at most 10s; when Redis has sent nothing
    back by then, the rule's fail_mode answers."""
    queue_timeout: Duration = 2.0
    """How long a call may wait inside the gateway for a free connection, at most 10s; past it the request gets
    503 overloaded, never a fail-mode answer."""
    breaker: BreakerDoc = BreakerDoc()
    coalesce: Bool = True
    """The calls of one event-loop tick share pipelines; false: one round trip per call."""
    max_connections: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 64
    """Redis connections open at once, at most (one pipeline in flight on each)."""

    @check
    def endpoint_is_consistent(self) -> Found:
        yield from _endpoint_problems(self)


def _endpoint_problems(doc: StoreEndpointDoc) -> Found:
    if doc.backend == "redis" and doc.url is None:
        yield "url", "is required when backend is redis"
    if doc.backend == "embedded" and doc.url is not None:
        yield "url", "is only for backend: redis"
    if doc.url is not None:
        scheme = urlsplit(doc.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            yield "url", "must be a redis://, rediss:// or unix:// URL"
        elif doc.cluster and scheme == "unix":
            yield "cluster", "a Redis Cluster is reached over TCP, not a unix:// socket"
    if doc.cluster and doc.backend != "redis":
        yield "cluster", "is only for backend: redis"
    if doc.timeout > MAX_TIMEOUT:
        yield "timeout", f"must be at most {MAX_TIMEOUT:.0f}s: requests wait this long when the store hangs"
    if doc.queue_timeout > MAX_TIMEOUT:
        yield (
            "queue_timeout",
            f"must be at most {MAX_TIMEOUT:.0f}s: requests wait this long when the gateway is saturated",
        )


class StoreDoc(StoreEndpointDoc):
    """Where limiter state lives: one store given inline (named default), or several under ``stores``."""

    stores: Mapping[Annotated[str, matching(STORE_NAME)], StoreEndpointDoc] | None = None
    default: Annotated[str, Strict(), matching(STORE_NAME)] | None = None
    """The store of tenants no routing entry names; required when several stores are named."""
    routing: StoreRouting = Field(default_factory=StoreRouting)
    instances: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 1
    """Gateway processes sharing the limits: a limit in local fail mode is divided by this."""
    key_prefix: Annotated[str, Strict(), matching(KEY_PREFIX)] = "tg"
    local_cache: Annotated[int, Strict(), Field(ge=0, le=10_000_000)] = 10_000
    """Keys remembered as over their limit until reset (refused without a store call); 0 turns it off."""

    @check
    def endpoint_is_consistent(self) -> Found:
        if self.stores is None:
            yield from _endpoint_problems(self)
            return
        for key in _ENDPOINT_KEYS:
            if key in self.model_fields_set:
                yield key, "belongs inside a named store when `stores` is given"
        if not self.stores:
            yield "stores", "at least one store is required"
        if self.default is None:
            if len(self.stores) > 1:
                yield "default", "is required when several stores are named"
        elif self.stores and self.default not in self.stores:
            yield "default", f"names no store (stores: {', '.join(self.stores)})"

    @check
    def routing_names_stores(self) -> Found:
        names = self.stores if self.stores is not None else {"default": self}
        if not names:
            return
        for key, table in (("plans", self.routing.plans), ("tenants", self.routing.tenants)):
            for who, target in table.items():
                if target not in names:
                    yield f"routing.{key}.{who}", f"names no store {target!r} (stores: {', '.join(names)})"


def _endpoint(name: str, doc: StoreEndpointDoc) -> StoreEndpoint:
    b = doc.breaker
    open_for_max = b.open_for_max if b.open_for_max is not None else max(_BREAKER.open_for_max, b.open_for)
    return StoreEndpoint(
        name=name,
        backend=doc.backend,
        url=doc.url,
        cluster=doc.cluster,
        timeout=min(doc.timeout, MAX_TIMEOUT),
        queue_timeout=min(doc.queue_timeout, MAX_TIMEOUT),
        breaker=BreakerConfig(failures=b.failures, open_for=b.open_for, open_for_max=open_for_max),
        coalesce=doc.coalesce,
        max_connections=doc.max_connections,
    )


def build_store(doc: StoreDoc) -> StoreConfig:
    if doc.stores is None:
        stores = {"default": _endpoint("default", doc)}
        default = "default"
    else:
        stores = {name: _endpoint(name, s) for name, s in doc.stores.items()}
        default = doc.default if doc.default is not None else next(iter(stores), "default")
    return StoreConfig(
        stores=MappingProxyType(stores) if stores else _one_store(),
        default=default if default in stores else next(iter(stores), "default"),
        routing=doc.routing,
        instances=doc.instances,
        key_prefix=doc.key_prefix,
        local_cache=doc.local_cache,
    )


def parse_store(data: Any, problems: Problems, path: str = "store") -> StoreConfig:
    """Validate a ``store`` section (either form); problems are recorded with their field paths."""
    doc = validate(StoreDoc, {} if data is None else data, path, problems)
    return build_store(doc if doc is not None else StoreDoc())
