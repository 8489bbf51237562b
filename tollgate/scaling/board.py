"""Where the processes' samples meet, and where the leader keeps each pool's replica state for its successor:
a Redis hash per pool (a field per process, with a time to live), or this process's memory."""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from tollgate.scaling.signals import Sample

__all__ = ["LocalBoard", "RedisBoard", "SignalBoard"]


class SignalBoard(Protocol):
    async def publish(self, pool: str, process: str, sample: Sample, ttl: float) -> None: ...

    async def collect(self, pool: str, now: float, ttl: float) -> list[Sample]: ...

    async def save_state(self, pool: str, state: dict[str, Any], ttl: float) -> None: ...

    async def load_state(self, pool: str) -> dict[str, Any] | None: ...


class LocalBoard:
    """One process: its own samples only."""

    def __init__(self) -> None:
        self._samples: dict[str, dict[str, Sample]] = {}
        self._states: dict[str, dict[str, Any]] = {}

    async def publish(self, pool: str, process: str, sample: Sample, ttl: float) -> None:
        self._samples.setdefault(pool, {})[process] = sample

    async def collect(self, pool: str, now: float, ttl: float) -> list[Sample]:
        return [s for s in self._samples.get(pool, {}).values() if now - s.at <= ttl]

    async def save_state(self, pool: str, state: dict[str, Any], ttl: float) -> None:
        self._states[pool] = dict(state)

    async def load_state(self, pool: str) -> dict[str, Any] | None:
        return self._states.get(pool)


class RedisBoard:
    """``<prefix>:scaling:signals:<pool>``: a hash of JSON samples by process; a sample older than ``ttl`` (its
    process stopped) is ignored and removed. ``<prefix>:scaling:state:<pool>``: the leader's view of the pool."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _signals(self, pool: str) -> str:
        return f"{self._prefix}:scaling:signals:{pool}"

    def _state(self, pool: str) -> str:
        return f"{self._prefix}:scaling:state:{pool}"

    async def publish(self, pool: str, process: str, sample: Sample, ttl: float) -> None:
        key = self._signals(pool)
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(key, process, orjson.dumps(sample.to_json()))
        pipe.pexpire(key, max(1, round(ttl * 1000)))
        await pipe.execute()

    async def collect(self, pool: str, now: float, ttl: float) -> list[Sample]:
        key = self._signals(pool)
        raw: dict[Any, Any] = await self._client.hgetall(key)
        live: list[Sample] = []
        stale: list[Any] = []
        for field, value in raw.items():
            try:
                sample = Sample.from_json(orjson.loads(value))
            except (ValueError, KeyError, TypeError):
                stale.append(field)
                continue
            if now - sample.at > ttl:
                stale.append(field)
            else:
                live.append(sample)
        if stale:
            await self._client.hdel(key, *stale)
        return live

    async def save_state(self, pool: str, state: dict[str, Any], ttl: float) -> None:
        await self._client.set(self._state(pool), orjson.dumps(state), px=max(1, round(ttl * 1000)))

    async def load_state(self, pool: str) -> dict[str, Any] | None:
        raw = await self._client.get(self._state(pool))
        if raw is None:
            return None
        doc = orjson.loads(raw)
        return doc if isinstance(doc, dict) else None
