"""The registry of tenants and keys: the config file's declarations plus runtime changes, followed across processes.

It outlives config versions (a reload rebuilds the :class:`Directory` from
the new file and the same runtime records) and is shared by every request of
the process. A background watcher polls the store so that a change made
through any process's admin API - a revoked key above all - is in force
everywhere within ``registry.poll_interval`` (250 ms by default). With a
``database.url`` and no ``registry:`` store of its own, the registry lives in
the database; on PostgreSQL a writer's notification wakes the watcher at
once, and the poll stays as the fallback.

The same store holds the namespaces and rules changed at runtime (``ns:`` and
``rule:`` records, see :mod:`.rule_records`); they are kept apart from the
tenants and keys, and ``on_rules_change`` is called whenever they change here
or elsewhere, so the owner can compile and swap in the merged rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tollgate.background import BackgroundTask
from tollgate.clock import Clock, SystemClock
from tollgate.config.identity import RegistryConfig
from tollgate.config.model import Config
from tollgate.database import Database
from tollgate.errors import StoreError
from tollgate.identity.directory import Directory
from tollgate.registry.rule_records import is_rules_record
from tollgate.registry.stores import Changes, DatabaseStore, FileStore, MemoryStore, RedisStore, RegistryStore

__all__ = ["Registry", "open_store", "registry_watching"]

log = logging.getLogger("tollgate.registry")


def open_store(config: RegistryConfig, base_dir: Path | None, database: Database | None = None) -> RegistryStore:
    """The store the ``registry:`` section names; without one, the database when there is one, else memory."""
    if config.backend == "redis":
        assert config.url is not None
        return RedisStore(config.url, config.prefix)
    if config.backend == "file":
        assert config.path is not None
        path = Path(config.path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return FileStore(path)
    if database is not None:
        return DatabaseStore(database)
    return MemoryStore()


class Registry:
    def __init__(
        self,
        config: Config,
        *,
        base_dir: Path | None = None,
        clock: Clock | None = None,
        database: Database | None = None,
    ) -> None:
        self.settings = config.registry
        self._clock = clock or SystemClock()  # how long the store has been unreachable
        self.store = open_store(config.registry, base_dir, database)
        # Set by another process's write (PostgreSQL notifications): the watcher polls at once.
        self._wake = asyncio.Event()
        # One poll or write at a time: a poll that read the store before a write here must not be taken in after it.
        self._turn = asyncio.Lock()
        self._unlisten: Callable[[], Any] | None = None
        # Tenant and key records (for the directory), and namespace and rule records, apart.
        self.records: dict[str, Any] = {}
        self.rule_records: dict[str, Any] = {}
        # Bumped whenever ``rule_records`` changes; ``on_rules_change`` runs right after.
        self.rules_generation = 0
        self.on_rules_change: Callable[[], None] | None = None
        self.version = 0
        self.directory = Directory(config)
        self._config = config
        self.failing_since: float | None = None
        self._last_error: str | None = None
        self.opened = False
        self.synced_at: float | None = None  # wall time of the last full load (open or resync)

    async def open(self) -> None:
        """Load the runtime records; a store that cannot be read stops the start (revocations must not be missed)."""
        loaded = await self.store.load()
        self._take(loaded)
        self.opened = True
        self.synced_at = self._clock.time()
        await self._listen()
        log.info(
            "registry: %d tenants, %d keys, %d runtime namespaces and rules (%s, version %d)",
            len(self.directory.tenants),
            len(self.directory.key_ids),
            len(self.rule_records),
            self.store.description,
            self.version,
        )
        if isinstance(self.store, MemoryStore) and self._config.identity.enabled:
            log.warning(
                "registry: no registry: section, so tenants and keys changed through the admin API are lost on restart"
            )

    async def _listen(self) -> None:
        """Have the store wake the watcher on other processes' writes, where it can; polling covers the rest."""
        if not isinstance(self.store, DatabaseStore):
            return
        try:
            self._unlisten = await self.store.listen(self._wake.set)
        except StoreError as exc:
            log.warning("registry: no change notifications (polling every %gs): %s", self.settings.poll_interval, exc)

    async def close(self) -> None:
        unlisten, self._unlisten = self._unlisten, None
        if unlisten is not None:
            await unlisten()
        await self.store.close()

    def use_config(self, config: Config) -> None:
        """A new config version: rebuild the directory from its declarations and the same runtime records."""
        if config.registry != self.settings:
            log.warning("registry: changes to the registry: section take effect only after a restart")
        self._config = config
        self.directory = Directory(config, self.records)

    def _take(self, changes: Changes) -> None:
        identity, rules = _split(changes.records)
        if changes.full:
            records = {name: doc for name, doc in identity.items() if doc is not None}
            # A directory of the config in force and no record is what a store with no record makes: the common
            # start (100,000 tenants in the file, none changed at runtime) keeps it instead of building it again.
            if records or self.records or self.directory.config_tenants is not self._config.tenants:
                self.directory = Directory(self._config, records)
            self.records = records
            fresh = {name: doc for name, doc in rules.items() if doc is not None}
            if fresh != self.rule_records:
                self.rule_records = fresh
                self._rules_changed()
        else:
            self._merge(identity, rules)
        self.version = changes.version

    def _merge(self, identity: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
        for target, part in ((self.records, identity), (self.rule_records, rules)):
            for name, doc in part.items():
                if doc is None:
                    target.pop(name, None)
                else:
                    target[name] = doc
        if identity:
            self.directory.apply(identity)
        if rules:
            self._rules_changed()

    def _rules_changed(self) -> None:
        self.rules_generation += 1
        if self.on_rules_change is not None:
            try:
                self.on_rules_change()
            except Exception:  # the watcher must keep following; the old rules stay in force
                log.exception("registry: the changed namespaces and rules could not be put in force")

    async def write(self, changes: Mapping[str, Any], *, create_only: Iterable[str] = ()) -> None:
        """Persist ``changes`` and put them in force here at once; other processes follow within a poll interval."""
        async with self._turn:
            await self.store.write(changes, create_only=create_only)
            self._merge(*_split(changes))

    async def resync(self) -> int:
        """Load every record from the store again (a full load, not a change poll) and put it in force.

        Answers how many records are in force after it; raises StoreError when the store cannot be read
        (what was in force stays).
        """
        async with self._turn:
            self._take(await self.store.load())
        self.synced_at = self._clock.time()
        return len(self.records) + len(self.rule_records)

    async def poll(self) -> bool:
        """Take in changes made elsewhere; True when there were any."""
        async with self._turn:
            changes = await self.store.changes_since(self.version)
            if changes is None:
                return False
            self._take(changes)
            return True

    async def watch(self) -> None:
        interval = self.settings.poll_interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.poll()
            except StoreError as exc:
                if self.failing_since is None:
                    self.failing_since = self._clock.monotonic()
                if str(exc) != self._last_error:
                    log.error("registry: cannot follow changes, keeping what we know: %s", exc)
                    self._last_error = str(exc)
                continue
            if self.failing_since is not None:
                log.info("registry: following changes again")
                self.failing_since, self._last_error = None, None

    def problems(self) -> list[str]:
        if self.failing_since is not None:
            return [
                f"the registry store has been unreachable for {self._clock.monotonic() - self.failing_since:.0f}s: {self._last_error}"
            ]
        return []


def _split(records: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tenant and key records, namespace and rule records)``."""
    identity: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    for name, doc in records.items():
        (rules if is_rules_record(name) else identity)[name] = doc
    return identity, rules


@contextlib.asynccontextmanager
async def registry_watching(registry: Registry) -> AsyncIterator[None]:
    """Open the registry before serving and follow its changes until the block ends; then close it."""
    await registry.open()
    watcher = BackgroundTask("registry-watcher", registry.watch)
    watcher.start()
    try:
        yield
    finally:
        await watcher.stop()
        await registry.close()
