"""A limiter whose extend.lua calls are recorded, through its store's engine: a compiled Limiter takes no patched
method, and its engine is the one part a test may swap."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from tollgate.clock import SystemClock
from tollgate.limiter.base import LOCAL_STORE
from tollgate.limiter.limiter import Limiter
from tollgate.limiter.store.embedded import EmbeddedEngine
from tollgate.limiter.store.engine import Arg, ScriptEngine
from tollgate.limiter.store.scripts import load_scripts

__all__ = ["recording_limiter"]


class _Recording:
    """An engine that notes each extend.lua call's (key, want, need) and hands every call to the one it wraps."""

    def __init__(self, engine: ScriptEngine, asked: list[Any]) -> None:
        self._engine = engine
        self._asked = asked
        self.name = engine.name
        self.single_slot = engine.single_slot
        self.remote = engine.remote
        self.stats = engine.stats

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]:
        if script == "extend":  # ARGV per limit: kind, limit, window, want, param, need
            self._asked.append([(key, args[j + 3], args[j + 5]) for key, j in zip(keys, range(0, len(args), 6))])
        return self._engine.run(script, keys, args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def recording_limiter() -> tuple[Limiter, list[Any]]:
    """A limiter as ``build_limiter()`` makes it (one embedded store), and the list its extensions go to."""
    asked: list[Any] = []
    clock = SystemClock()
    scripts = load_scripts()
    engine = EmbeddedEngine(clock, scripts=scripts, name="default", coalesce=True)
    local = EmbeddedEngine(clock, scripts=scripts, name=LOCAL_STORE)
    return Limiter({"default": _Recording(engine, asked)}, clock=clock, local=local), asked
