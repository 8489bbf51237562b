"""Where runtime changes to tenants and keys persist: memory, a local JSON file (atomic replace), Redis, or the database.

Every store holds the same records (``t:<tenant>``, ``k:<key id>``,
``r:<config key id>``, ``ns:<namespace>``, ``rule:<rule>`` -> JSON object) and a version that grows with every
write, and answers "what changed since version N" so each gateway process
can follow the others' changes within a poll interval (on PostgreSQL, the
database store also wakes the other processes with a notification).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from tollgate.database import Database
from tollgate.errors import Conflict, StoreError

__all__ = [
    "REGISTRY_CHANNEL",
    "Changes",
    "DatabaseStore",
    "FileStore",
    "MemoryStore",
    "RedisStore",
    "RegistryConflict",
    "RegistryStore",
]

_FORMAT = "tollgate-registry/1"
REGISTRY_CHANNEL = "tollgate_registry"  # PostgreSQL NOTIFY channel: the payload is the new version


class RegistryConflict(Conflict):
    """A create named a tenant or key that already exists."""

    default_code = "already_exists"


@dataclass(frozen=True, slots=True)
class Changes:
    version: int
    records: dict[str, Any]  # name -> record, or None when deleted
    full: bool = False  # True: ``records`` is the whole state, replacing everything known


class RegistryStore(Protocol):
    description: str

    async def load(self) -> Changes: ...

    async def changes_since(self, version: int) -> Changes | None: ...

    async def write(self, changes: Mapping[str, Any], *, create_only: Iterable[str] = ()) -> int: ...

    async def close(self) -> None: ...


def _conflict(names: list[str]) -> RegistryConflict:
    what = ", ".join(n.partition(":")[2] for n in names[:5])
    return RegistryConflict(f"already exists: {what}" + (f" and {len(names) - 5} more" if len(names) > 5 else ""))


class MemoryStore:
    """Runtime changes live only as long as the process: for tests and single-process trials."""

    description = "memory (runtime changes are lost on restart)"

    def __init__(self) -> None:
        self.version = 0
        self.records: dict[str, Any] = {}

    async def load(self) -> Changes:
        return Changes(self.version, dict(self.records), full=True)

    async def changes_since(self, version: int) -> Changes | None:
        return None

    async def write(self, changes: Mapping[str, Any], *, create_only: Iterable[str] = ()) -> int:
        taken = [n for n in create_only if n in self.records]
        if taken:
            raise _conflict(taken)
        for name, doc in changes.items():
            if doc is None:
                self.records.pop(name, None)
            else:
                self.records[name] = doc
        self.version += 1
        return self.version

    async def close(self) -> None:
        return None


class FileStore:
    """A JSON file replaced atomically (write, fsync, rename) under an flock; other processes poll its inode/mtime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.description = f"file {path}"
        self._seen: tuple[int, int, int] | None = None
        self._known: dict[str, Any] = {}

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> tuple[int, dict[str, Any], tuple[int, int, int] | None]:
        for _attempt in range(3):
            before = self._stat()
            if before is None:
                return 0, {}, None
            try:
                doc = orjson.loads(self.path.read_bytes())
            except FileNotFoundError:
                continue
            except orjson.JSONDecodeError as exc:
                raise StoreError(f"registry file {self.path} is not valid JSON: {exc}") from None
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("records"), dict):
                raise StoreError(f"registry file {self.path} is not a {_FORMAT} document")
            return int(doc.get("version", 0)), doc["records"], before
        raise StoreError(f"registry file {self.path} keeps changing under us")

    async def load(self) -> Changes:
        try:
            version, records, seen = await asyncio.to_thread(self._read)
        except OSError as exc:
            raise StoreError(f"cannot read registry file {self.path}: {exc.strerror or exc}") from None
        self._seen, self._known = seen, records
        return Changes(version, dict(records), full=True)

    async def changes_since(self, version: int) -> Changes | None:
        if self._stat() == self._seen:
            return None
        try:
            new_version, records, seen = await asyncio.to_thread(self._read)
        except OSError as exc:
            raise StoreError(f"cannot read registry file {self.path}: {exc.strerror or exc}") from None
        old = self._known
        diff = {name: doc for name, doc in records.items() if old.get(name) != doc}
        diff.update({name: None for name in old if name not in records})
        self._seen, self._known = seen, records
        return Changes(new_version, diff)

    def _write(self, changes: Mapping[str, Any], create_only: list[str]) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                version, records, _seen = self._read()
                taken = [n for n in create_only if n in records]
                if taken:
                    raise _conflict(taken)
                records = dict(records)
                for name, doc in changes.items():
                    if doc is None:
                        records.pop(name, None)
                    else:
                        records[name] = doc
                version += 1
                data = orjson.dumps({"format": _FORMAT, "version": version, "records": records})
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                return version
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def write(self, changes: Mapping[str, Any], *, create_only: Iterable[str] = ()) -> int:
        try:
            return await asyncio.to_thread(self._write, changes, list(create_only))
        except OSError as exc:
            raise StoreError(f"cannot write registry file {self.path}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        return None


class RedisStore:
    """A hash of records, a version counter and a sorted set "record -> version of its last change", in one hash slot."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self._redis_errors: tuple[type[BaseException], ...] = (aioredis.RedisError, OSError)
        self.client = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        tag = "{" + prefix + "}"
        self.k_records = f"{tag}:records"
        self.k_changes = f"{tag}:changes"
        self.k_version = f"{tag}:version"
        self.description = f"redis {prefix}"

    @staticmethod
    def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def load(self) -> Changes:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.k_version)
                pipe.hgetall(self.k_records)
                version, raw = await pipe.execute()
        except self._redis_errors as exc:
            raise StoreError(f"registry redis: {exc}") from exc
        return Changes(int(version or 0), self._decode(raw), full=True)

    async def changes_since(self, version: int) -> Changes | None:
        try:
            current = int(await self.client.get(self.k_version) or 0)
            if current == version:
                return None
            if current < version:  # the Redis data was lost or replaced: start over from what is there
                return await self.load()
            names = cast("list[bytes]", await self.client.zrangebyscore(self.k_changes, f"({version}", current))
            if not names:
                return Changes(current, {})
            values = await self.client.hmget(self.k_records, names)
        except self._redis_errors as exc:
            raise StoreError(f"registry redis: {exc}") from exc
        return Changes(current, {n.decode(): orjson.loads(v) if v is not None else None for n, v in zip(names, values)})

    async def write(self, changes: Mapping[str, Any], *, create_only: Iterable[str] = ()) -> int:
        from redis.exceptions import WatchError

        create_only = list(create_only)
        sets = {name: orjson.dumps(doc) for name, doc in changes.items() if doc is not None}
        deletes = [name for name, doc in changes.items() if doc is None]
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(self.k_version)
                        if create_only:
                            existing = await pipe.hmget(self.k_records, create_only)
                            taken = [n for n, v in zip(create_only, existing) if v is not None]
                            if taken:
                                raise _conflict(taken)
                        version = int(await pipe.get(self.k_version) or 0) + 1
                        pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                        pipe.set(self.k_version, version)
                        if sets:
                            pipe.hset(self.k_records, mapping=sets)  # type: ignore[arg-type]
                        if deletes:
                            pipe.hdel(self.k_records, *deletes)
                        if changes:
                            pipe.zadd(self.k_changes, dict.fromkeys(changes, version))
                        await pipe.execute()
                        return version
                    except WatchError:
                        continue
        except self._redis_errors as exc:
            raise StoreError(f"registry redis: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(*self._redis_errors):
            await self.client.aclose()


class DatabaseStore:
    """Rows ``registry_records(name, doc, version)`` (``doc`` NULL: deleted) and the counter ``registry_version``.

    A write bumps the counter first (``UPDATE ... RETURNING``, which also
    queues concurrent writers on its row), checks ``create_only`` and upserts
    the records with the new version, all in one transaction; a conflict
    rolls it all back. Readers ask for the records whose version is past
    theirs. On PostgreSQL the writer then NOTIFYs :data:`REGISTRY_CHANNEL`.
    The Database is the caller's: :meth:`close` leaves it open.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.description = f"database {db.description}"

    async def load(self) -> Changes:
        async with self.db.transaction() as tx:  # the version and the records of one moment
            version = await tx.fetchval("SELECT version FROM registry_version WHERE id = 1")
            rows = await tx.fetch("SELECT name, doc FROM registry_records WHERE doc IS NOT NULL")
        return Changes(int(version or 0), {name: orjson.loads(doc) for name, doc in rows}, full=True)

    async def changes_since(self, version: int) -> Changes | None:
        current = int(await self.db.fetchval("SELECT version FROM registry_version WHERE id = 1") or 0)
        if current == version:
            return None
        if current < version:  # the database was replaced: start over from what is there
            return await self.load()
        rows = await self.db.fetch(
            "SELECT name, doc, version FROM registry_records WHERE version > $1 AND version <= $2", version, current
        )
        return Changes(current, {name: None if doc is None else orjson.loads(doc) for name, doc, _v in rows})

    async def write(self, changes: Mapping[str, Any], *, create_only: Iterable[str] = ()) -> int:
        create_only = list(create_only)
        async with self.db.transaction() as tx:
            version = int(
                await tx.fetchval("UPDATE registry_version SET version = version + 1 WHERE id = 1 RETURNING version")
            )
            taken = [
                name
                for name in create_only
                if await tx.fetchval("SELECT 1 FROM registry_records WHERE name = $1 AND doc IS NOT NULL", name)
            ]
            if taken:
                raise _conflict(taken)
            if changes:
                await tx.executemany(
                    "INSERT INTO registry_records (name, doc, version) VALUES ($1, $2, $3) "
                    "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, version = excluded.version",
                    [
                        (name, None if doc is None else orjson.dumps(doc).decode(), version)
                        for name, doc in changes.items()
                    ],
                )
        try:
            await self.db.notify(REGISTRY_CHANNEL, str(version))
        except StoreError:  # written; the others find it when they poll
            pass
        return version

    async def listen(self, wake: Callable[[], None]) -> Callable[[], Any] | None:
        """Call ``wake()`` whenever another process writes (PostgreSQL); None where there are no notifications."""
        return await self.db.listen(REGISTRY_CHANNEL, lambda _payload: wake())

    async def close(self) -> None:
        return None
