"""Limiter stores: engines that run the ``lua/`` scripts, embedded (lupa) or on Redis; they know keys, not tenants."""

from typing import TYPE_CHECKING, Any

from tollgate.circuit_breaker import BreakerSettings, CircuitBreaker
from tollgate.limiter.store.embedded import EmbeddedEngine
from tollgate.limiter.store.engine import EngineStats, ScriptCall, ScriptEngine
from tollgate.limiter.store.keyspace import Keyspace
from tollgate.limiter.store.scripts import ENTRY_SCRIPTS, Script, load_scripts, lua_dir

if TYPE_CHECKING:
    from tollgate.limiter.store.redis_engine import RedisEngine

__all__ = [
    "ENTRY_SCRIPTS",
    "BreakerSettings",
    "CircuitBreaker",
    "EmbeddedEngine",
    "EngineStats",
    "Keyspace",
    "RedisEngine",
    "Script",
    "ScriptCall",
    "ScriptEngine",
    "load_scripts",
    "lua_dir",
]


def __getattr__(name: str) -> Any:
    """``RedisEngine`` on first use: redis-py is not loaded by a gateway that counts in-process."""
    if name == "RedisEngine":
        from tollgate.limiter.store.redis_engine import RedisEngine

        return RedisEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
