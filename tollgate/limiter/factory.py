"""Builds the engines and the :class:`Limiter` described by a :class:`StoreConfig`."""

from __future__ import annotations

from collections.abc import Mapping

from tollgate.circuit_breaker import BreakerSettings
from tollgate.clock import Clock, SystemClock
from tollgate.config.store import StoreConfig, StoreEndpoint
from tollgate.limiter.base import LOCAL_STORE
from tollgate.limiter.limiter import Limiter
from tollgate.limiter.store.embedded import EmbeddedEngine
from tollgate.limiter.store.engine import ScriptEngine
from tollgate.limiter.store.scripts import Script, load_scripts

__all__ = ["build_engine", "build_limiter"]


def build_engine(endpoint: StoreEndpoint, *, clock: Clock, scripts: Mapping[str, Script] | None = None) -> ScriptEngine:
    """One engine for one named store (nothing connects before ``Limiter.start()`` or the first call)."""
    scripts = scripts or load_scripts()
    if endpoint.backend == "embedded":
        return EmbeddedEngine(clock, scripts=scripts, name=endpoint.name, coalesce=True)
    assert endpoint.url is not None
    # Imported here: redis-py (and what it brings along) is not loaded by a gateway that counts in-process.
    from tollgate.limiter.store.redis_engine import RedisEngine

    return RedisEngine(
        endpoint.url,
        clock=clock,
        cluster=endpoint.cluster,
        timeout=endpoint.timeout,
        queue_timeout=endpoint.queue_timeout,
        breaker=BreakerSettings(
            failures=endpoint.breaker.failures,
            open_seconds=endpoint.breaker.open_for,
            max_open_seconds=endpoint.breaker.open_for_max,
        ),
        coalesce=endpoint.coalesce,
        max_connections=endpoint.max_connections,
        scripts=scripts,
        name=endpoint.name,
    )


def build_limiter(config: StoreConfig | None = None, *, clock: Clock | None = None) -> Limiter:
    """The limiter for a config: one engine per named store, the embedded fallback, routing and cache size.

    Close it with ``await limiter.close()`` (e.g. from an aiohttp ``cleanup_ctx``).
    """
    config = config or StoreConfig()
    clock = clock or SystemClock()
    scripts = load_scripts()
    stores = {name: build_engine(endpoint, clock=clock, scripts=scripts) for name, endpoint in config.stores.items()}
    return Limiter(
        stores,
        clock=clock,
        default_store=config.default,
        local=EmbeddedEngine(clock, scripts=scripts, name=LOCAL_STORE),
        instances=config.instances,
        key_prefix=config.key_prefix,
        cache_size=config.local_cache,
        plan_routes=config.routing.plans,
        tenant_routes=config.routing.tenants,
    )
