"""``tollgate db import``: today's file and Redis registries and usage stores, copied into the database of record.

Registry records (tenants, keys as hashes, namespaces, rules) are written
through the database's registry store, only those that differ from what it
holds, so a second run writes nothing. Usage counters are *set* to the
source's values (never added), so a second run gives the same counters; the
counters of the same scopes the database held before are replaced.

A source is a path (a registry file, a usage JSON file) or a Redis URL
(``redis://``, ``rediss://``, ``unix://``): the registry under the config's
``registry.prefix``, the usage hashes under ``usage.key_prefix``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tollgate.accounting.aggregates import USER_FIELDS
from tollgate.accounting.db_usage_store import (
    alerts_scope,
    day_scope,
    month_scope,
    scope_of_redis_key,
    tenants_scope,
    users_scope,
)
from tollgate.database import Database
from tollgate.database import usage_sql as sql
from tollgate.errors import StoreError
from tollgate.registry.stores import DatabaseStore, FileStore, RedisStore

__all__ = ["Imported", "import_registry", "import_usage", "is_redis_url"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SCAN_COUNT = 1000


def is_redis_url(source: str) -> bool:
    return source.startswith(_REDIS_SCHEMES)


@dataclass(frozen=True, slots=True)
class Imported:
    """What one source gave: ``read`` items found there, ``written`` to the database (registry: the records new or
    changed there; usage: every counter, set to the source's value)."""

    source: str
    read: int
    written: int


async def import_registry(db: Database, source: str, prefix: str) -> Imported:
    """Copy the records of the registry at ``source`` (a file path or a Redis URL) into the database."""
    store: FileStore | RedisStore = RedisStore(source, prefix) if is_redis_url(source) else FileStore(Path(source))
    try:
        loaded = await store.load()
    finally:
        await store.close()
    target = DatabaseStore(db)
    held = (await target.load()).records
    changed = {name: doc for name, doc in loaded.records.items() if doc is not None and held.get(name) != doc}
    if changed:
        await target.write(changed)
    return Imported(store.description, len(loaded.records), len(changed))


def _file_rows(doc: dict[str, Any], now: int) -> list[tuple[str, str, int]]:
    """The counters of a usage file (:class:`~tollgate.accounting.usage_store.FileUsageStore`'s document)."""
    rows: list[tuple[str, str, int]] = []
    for tenant, months in doc.get("months", {}).items():
        for month, fields in months.items():
            rows.extend((month_scope(tenant, month), f, int(v)) for f, v in fields.items())
            rows.append((tenants_scope(month), tenant, 0))
    for tenant, days in doc.get("days", {}).items():
        for day, fields in days.items():
            rows.extend((day_scope(tenant, day), f, int(v)) for f, v in fields.items())
    for tenant, months in doc.get("alerts", {}).items():
        for month, names in months.items():
            rows.extend((alerts_scope(tenant, month), str(name), now) for name in names)
    for tenant, months in doc.get("users", {}).items():
        for month, users in months.items():
            for user, counts in users.items():
                rows.extend((users_scope(tenant, month), f"{f}:{user}", int(v)) for f, v in zip(USER_FIELDS, counts))
    return rows


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _redis_rows(url: str, prefix: str) -> list[tuple[str, str, int]]:
    """The counters of a Redis usage store: its hashes field by field, its sets (tenants of a month) member by member."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    rows: list[tuple[str, str, int]] = []
    try:
        async for raw_key in client.scan_iter(match=f"{prefix}:*", count=_SCAN_COUNT):
            key = _text(raw_key)
            scope = scope_of_redis_key(key, prefix)
            if scope is None:
                continue
            kind = _text(await client.type(key))
            if kind == "hash":
                fields = await client.hgetall(key)
                rows.extend((scope, _text(f), int(v)) for f, v in fields.items())
            elif kind == "set":
                rows.extend((scope, _text(m), 0) for m in await client.smembers(key))
    except (RedisError, OSError) as exc:
        raise StoreError(f"usage redis {url}: {exc}") from exc
    finally:
        await client.aclose()
    return rows


async def import_usage(db: Database, source: str, prefix: str) -> Imported:
    """Set the database's usage counters to those of the usage store at ``source`` (a JSON file or a Redis URL)."""
    if is_redis_url(source):
        rows = await _redis_rows(source, prefix)
        described = f"redis {source.partition('@')[2] or source} ({prefix}:*)"
    else:
        path = Path(source)
        try:
            doc = orjson.loads(await asyncio.to_thread(path.read_bytes))
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"cannot read usage file {path}: {exc}") from None
        rows = _file_rows(doc, int(time.time()))
        described = f"file {path}"
    rows.sort(key=lambda r: (r[0], r[1]))
    written = 0
    async with db.transaction() as tx:
        for chunk in (rows[i : i + 1000] for i in range(0, len(rows), 1000)):
            await tx.executemany(sql.SET_COUNTER, chunk)
            written += len(chunk)
    return Imported(described, len(rows), written)


def _default_sources(config: Any, base_dir: Path) -> tuple[str | None, str | None]:
    """The registry and usage stores the config names (file paths under its data_dir), when it names them."""
    registry: str | None = None
    settings = config.registry
    if settings.backend == "file" and settings.path is not None:
        registry = str(base_dir / settings.path)
    elif settings.backend == "redis" and settings.url is not None:
        registry = settings.url
    usage = config.accounting.usage
    usage_source = str(base_dir / usage.path) if usage.path is not None else usage.url
    return registry, usage_source


def import_command(config_path: str, from_registry: str | None, from_usage: str | None) -> int:
    """``tollgate db import``: migrate the config's database, import, print what came from where; the exit status."""
    import sys

    from tollgate.config import load_config
    from tollgate.database import migrate, open_database
    from tollgate.errors import ConfigError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return 2
    settings = config.database
    if settings.url is None:
        print(f"{config_path}: no database.url: the config names no database to import into", file=sys.stderr)
        return 2
    base_dir = config.state_dir or Path(config_path).resolve().parent
    default_registry, default_usage = _default_sources(config, base_dir)
    registry_source = from_registry or default_registry
    usage_source = from_usage or default_usage
    if registry_source is None and usage_source is None:
        print(
            "nothing to import: give --from-registry or --from-usage (the config names neither store)", file=sys.stderr
        )
        return 2
    try:
        db = open_database(settings.url, base_dir=base_dir, pool_size=1, timeout=settings.timeout)
    except ConfigError as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return 2

    async def run() -> list[tuple[str, Imported]]:
        await db.open()
        try:
            await migrate(db)
            done: list[tuple[str, Imported]] = []
            if registry_source is not None:
                done.append(("registry", await import_registry(db, registry_source, config.registry.prefix)))
            if usage_source is not None:
                done.append(("usage", await import_usage(db, usage_source, config.accounting.usage.key_prefix)))
            return done
        finally:
            await db.close()

    try:
        done = asyncio.run(run())
    except StoreError as exc:
        print(f"import into {db.description} failed: {exc}", file=sys.stderr)
        return 1
    for what, imported in done:
        unit = "records" if what == "registry" else "counters"
        print(
            f"{what}: {imported.read} {unit} read from {imported.source}, {imported.written} written to {db.description}"
        )
    return 0
