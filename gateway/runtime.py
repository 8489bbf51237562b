"""The running gateway's state: one compiled config version behind a single reference, swapped on reload."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

from .accounting import Accounting
from .config import Config, load_config
from .errors import ConfigError
from .forward import UpstreamPool
from .identity import IdentityRuntime, Registry, compile_identity
from .routing import ModelRoute, compile_routes

__all__ = ["Runtime", "GatewayState", "STATE"]

log = logging.getLogger("tollgate.runtime")


class Runtime:
    """Everything compiled from one config version; immutable once built, so a request reads one consistent version."""

    __slots__ = ("config", "version", "routes", "identity")

    def __init__(self, config: Config, version: int) -> None:
        self.config = config
        self.version = version
        self.routes: Mapping[str, ModelRoute] = compile_routes(config)
        self.identity: IdentityRuntime = compile_identity(config)


class GatewayState:
    """Owns the current :class:`Runtime` and the resources that outlive a config version."""

    def __init__(self, config: Config, *, config_path: str | Path | None = None) -> None:
        self._versions = itertools.count(1)
        self.runtime = Runtime(config, next(self._versions))
        self.config_path = Path(config_path) if config_path is not None else None
        # Tenants and keys: the config's plus runtime changes; outlives config versions.
        self.registry = Registry(config, base_dir=self.config_path.parent if self.config_path else None)
        self.pool = UpstreamPool()
        # Usage, cost, quotas, metrics, access and audit logs; flushed in the background, and on close.
        self.accounting = Accounting(config, state=self)
        self._reload_lock = asyncio.Lock()

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def start(self) -> None:
        await self.pool.apply(self.config.upstreams)
        await self.accounting.start()

    async def close(self) -> None:
        await self.accounting.close()
        await self.pool.close()

    async def readiness_problems(self) -> list[str]:
        """Why the gateway should not get traffic now; empty when it is ready."""
        problems: list[str] = []
        usable = [name for name, c in self.pool.clients.items() if c.session is not None and not c.session.closed]
        if not usable:
            problems.append("no upstream is usable")
        problems.extend(self.registry.problems())
        return problems

    async def apply(self, config: Config) -> Runtime:
        """Swap in a new config version; on any failure the old one stays in force."""
        async with self._reload_lock:
            old = self.runtime
            if config.listeners != old.config.listeners:
                log.warning("listener changes in %s take effect only after a restart", config.source)
            runtime = Runtime(config, next(self._versions))
            await self.pool.apply(config.upstreams)
            self.registry.use_config(config)
            self.runtime = runtime
            log.info("config version %d in force (from %s)", runtime.version, config.source)
            return runtime

    async def reload(self) -> tuple[bool, list[str]]:
        """Re-read the config file. Returns ``(applied, problems)``; a refused file changes nothing."""
        if self.config_path is None:
            return False, ["the gateway was not started from a config file"]
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping config version %d:\n  %s", self.runtime.version, "\n  ".join(exc.problems))
            return False, exc.problems
        await self.apply(config)
        return True, []


STATE = web.AppKey("state", GatewayState)
