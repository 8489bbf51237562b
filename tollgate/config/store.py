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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from tollgate.config.reader import Node

__all__ = ["STORE_BACKENDS", "BreakerConfig", "StoreConfig", "StoreEndpoint", "StoreRouting", "parse_store"]

STORE_BACKENDS = ("embedded", "redis")
STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KEY_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
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


@dataclass(frozen=True, slots=True)
class StoreRouting:
    """Which store holds a tenant's counters: by tenant first, then by plan, else the default store."""

    plans: Mapping[str, str] = field(default_factory=_empty)
    tenants: Mapping[str, str] = field(default_factory=_empty)


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


_ENDPOINT = StoreEndpoint()  # frozen: the defaults, read where a slots class attribute cannot be
_BREAKER = BreakerConfig()


def parse_store(node: Node) -> StoreConfig:
    """Read the ``store`` section (either form); problems are recorded with their field paths."""
    if node.has("stores"):
        for key in _ENDPOINT_KEYS:
            if node.has(key):
                node.raw(key)
                node.error(key, "belongs inside a named store when `stores` is given")
        stores = {name: _endpoint(name, section) for name, section in node.named("stores", name_pattern=STORE_NAME)}
        if not node.data.get("stores"):
            node.error("stores", "at least one store is required")
        default = node.str("default", None, pattern=STORE_NAME)
        if default is None:
            if len(stores) == 1:
                default = next(iter(stores))
            elif stores:
                node.error("default", "is required when several stores are named")
        elif stores and default not in stores:
            node.error("default", f"names no store (stores: {', '.join(stores)})")
    else:
        stores = {"default": _endpoint("default", node, finish=False)}
        default = "default"
    routing = _routing(node.child("routing"), stores)
    config = StoreConfig(
        stores=MappingProxyType(stores) if stores else _one_store(),
        default=default if default in stores else next(iter(stores), "default"),
        routing=routing,
        instances=node.int("instances", 1, min=1, max=100_000),
        key_prefix=node.str("key_prefix", "tg", pattern=KEY_PREFIX),
        local_cache=node.int("local_cache", 10_000, min=0, max=10_000_000),
    )
    node.finish()
    return config


def _endpoint(name: str, node: Node, *, finish: bool = True) -> StoreEndpoint:
    backend = node.str("backend", "embedded", choices=STORE_BACKENDS)
    url = node.str("url", None)
    cluster = node.bool("cluster", False)
    if backend == "redis" and url is None:
        node.error("url", "is required when backend is redis")
    if backend == "embedded" and url is not None:
        node.error("url", "is only for backend: redis")
    if url is not None:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            node.error("url", "must be a redis://, rediss:// or unix:// URL")
        elif cluster and scheme == "unix":
            node.error("cluster", "a Redis Cluster is reached over TCP, not a unix:// socket")
    if cluster and backend != "redis":
        node.error("cluster", "is only for backend: redis")
    timeout = node.duration("timeout", _ENDPOINT.timeout)
    if timeout > MAX_TIMEOUT:
        node.error("timeout", f"must be at most {MAX_TIMEOUT:.0f}s: requests wait this long when the store hangs")
        timeout = MAX_TIMEOUT
    queue_timeout = node.duration("queue_timeout", _ENDPOINT.queue_timeout)
    if queue_timeout > MAX_TIMEOUT:
        node.error(
            "queue_timeout",
            f"must be at most {MAX_TIMEOUT:.0f}s: requests wait this long when the gateway is saturated",
        )
        queue_timeout = MAX_TIMEOUT
    b = node.child("breaker")
    open_for = b.duration("open_for", _BREAKER.open_for)
    open_for_max = b.duration("open_for_max", None)
    if open_for_max is None:  # not given: the default cap, or no backoff past a longer open_for
        open_for_max = max(_BREAKER.open_for_max, open_for)
    elif open_for_max < open_for:
        b.error("open_for_max", "must be at least open_for")
    breaker = BreakerConfig(
        failures=b.int("failures", _BREAKER.failures, min=1, max=1000), open_for=open_for, open_for_max=open_for_max
    )
    b.finish()
    endpoint = StoreEndpoint(
        name=name,
        backend=backend,
        url=url,
        cluster=cluster,
        timeout=timeout,
        queue_timeout=queue_timeout,
        breaker=breaker,
        coalesce=node.bool("coalesce", True),
        max_connections=node.int("max_connections", _ENDPOINT.max_connections, min=1, max=10_000),
    )
    if finish:
        node.finish()
    return endpoint


def _routing(node: Node, stores: Mapping[str, StoreEndpoint]) -> StoreRouting:
    tables = {}
    for key in ("plans", "tenants"):
        table = node.str_map(key)
        for who, target in table.items():
            if stores and target not in stores:
                node.problems.add(f"{node.at(key)}.{who}", f"names no store {target!r} (stores: {', '.join(stores)})")
        tables[key] = MappingProxyType(table)
    node.finish()
    return StoreRouting(plans=tables["plans"], tenants=tables["tenants"])
