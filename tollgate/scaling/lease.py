"""Who decides for the fleet: a lease in Redis (SET NX PX, renewed and released by compare scripts), or this process
alone when there is no Redis."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from tollgate.limiter.store.scripts import lua_dir

__all__ = ["Lease", "RedisLease", "SoleLease", "lease_script"]

log = logging.getLogger("tollgate.scaling")


def lease_script(name: str) -> str:
    """The source of ``lua/scaling/<name>.lua``."""
    # one name per joinpath: an installed package's data folder may be a namespace package (MultiplexedPath)
    return lua_dir().joinpath("scaling").joinpath(f"{name}.lua").read_text(encoding="utf-8")


class Lease(Protocol):
    """The right to decide. :meth:`hold` takes or renews it and says whether this process holds it now."""

    holder: str

    async def hold(self) -> bool: ...

    async def release(self) -> None: ...


class SoleLease:
    """Without a shared store the one process decides."""

    def __init__(self, holder: str) -> None:
        self.holder = holder

    async def hold(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class RedisLease:
    """A key holding the leader's id with a time to live; the leader renews it every interval.

    A leader that stops renewing (dead, partitioned, stopped) loses it when the key expires, so another
    process takes over within one lease period. Renew and release compare the holder first (Lua, atomic).
    """

    def __init__(self, client: Any, key: str, holder: str, ttl: float) -> None:
        self.holder = holder
        self.key = key
        self._client = client
        self._ttl_ms = max(1, round(ttl * 1000))
        self._renew = client.register_script(lease_script("lease_renew"))
        self._release = client.register_script(lease_script("lease_release"))
        self.leader = False

    async def hold(self) -> bool:
        if self.leader and int(await self._renew(keys=[self.key], args=[self.holder, self._ttl_ms])) == 1:
            return True
        took = await self._client.set(self.key, self.holder, nx=True, px=self._ttl_ms)
        if took and not self.leader:
            log.info("scaling: %s now decides for the fleet", self.holder)
        elif not took and self.leader:
            log.warning("scaling: %s lost the lease", self.holder)
        self.leader = bool(took)
        return self.leader

    async def release(self) -> None:
        if self.leader:
            self.leader = False
            await self._release(keys=[self.key], args=[self.holder])
