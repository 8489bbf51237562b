"""Limiter stores: engines that run the ``lua/`` scripts, embedded (lupa) or on Redis; they know keys, not tenants."""

from tollgate.circuit_breaker import BreakerSettings, CircuitBreaker
from tollgate.limiter.store.embedded import EmbeddedEngine
from tollgate.limiter.store.engine import EngineStats, ScriptCall, ScriptEngine
from tollgate.limiter.store.keyspace import Keyspace
from tollgate.limiter.store.redis_engine import RedisEngine
from tollgate.limiter.store.scripts import ENTRY_SCRIPTS, Script, load_scripts, lua_dir

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
