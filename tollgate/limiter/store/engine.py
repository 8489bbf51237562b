"""The ``ScriptEngine`` protocol: run a named limiter script against a keyspace; knows keys, never tenants."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tollgate.limiter.store.calls import Arg, ScriptCall

__all__ = ["Arg", "EngineStats", "ScriptCall", "ScriptEngine"]


@dataclass(slots=True)
class EngineStats:
    """Counters an engine keeps for benchmarks and metrics."""

    calls: int = 0  # script calls asked for
    round_trips: int = 0  # network round trips made (pipelines sent, NOSCRIPT reloads included)
    noscript_reloads: int = 0  # calls re-sent because the server had lost the script (EVAL) or the library (FCALL)
    failures: int = 0  # calls answered with a StoreError (including StoreTimeout)
    rejected_open: int = 0  # calls refused at once because the circuit breaker was open
    overloaded: int = 0  # calls refused because they waited for a connection past the queue bound (not failures)


@runtime_checkable
class ScriptEngine(Protocol):
    """Runs the scripts of ``lua/`` atomically; every error is a :class:`tollgate.errors.StoreError`.

    ``single_slot`` tells the caller that all keys of one call must share a
    hash slot (Redis Cluster): the caller groups keys by hash tag. ``remote``
    says whether a call costs a network round trip (worth caching denials).
    """

    name: str
    single_slot: bool
    remote: bool
    stats: EngineStats

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]:
        """Run one script; awaiting it gives its reply (lists of ints / bytes, like Redis) or raises StoreError."""
        ...

    async def run_batch(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Run several calls in one round trip; each item is a reply or the StoreError of that call."""
        ...

    async def start(self) -> None:
        """Open what the first calls would otherwise wait for (connections, scripts); never raises for an
        unreachable store."""
        ...

    async def ping(self, timeout: float) -> None:
        """Answer within ``timeout`` seconds or raise StoreError: a readiness probe, off the request path."""
        ...

    async def close(self) -> None: ...
