"""Limiter stores: engines that run the ``lua/`` scripts, embedded (lupa) or on Redis; they know keys, not tenants."""

from .breaker import BreakerSettings, CircuitBreaker
from .embedded import EmbeddedEngine
from .engine import EngineStats, ScriptCall, ScriptEngine
from .keyspace import Keyspace
from .redis_engine import RedisEngine
from .scripts import ENTRY_SCRIPTS, Script, load_scripts, lua_dir

__all__ = [
    "BreakerSettings",
    "CircuitBreaker",
    "EmbeddedEngine",
    "EngineStats",
    "ENTRY_SCRIPTS",
    "Keyspace",
    "RedisEngine",
    "Script",
    "ScriptCall",
    "ScriptEngine",
    "load_scripts",
    "lua_dir",
]
