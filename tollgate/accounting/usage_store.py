"""Where usage aggregates and fired alerts live: Redis hashes (fleet-wide), a local file (embedded), or memory.

Every store applies a whole :class:`Batch` in **one** round trip and answers
with the new monthly totals of the tenants it touched, which the quota check
reads. An alert is *claimed* before it fires: the claim succeeds in exactly
one process (``HSETNX`` in Redis; a read-modify-write under ``flock`` for the
file), so an alert fires once per threshold per period however many workers
see the crossing.

End users (:data:`~.aggregates.USER_FIELDS` per end user and month) are kept
apart up to ``max_end_users`` per tenant and month, so a client that sends a
new ``user`` with every request grows one bounded table, not the store: the
memory and file stores hold the cap exactly (one writer at a time); the Redis
store asks which end users of a batch its hash holds, then writes (one more
round trip per flush, none per request), so processes that flush at the same
moment can pass the cap by the new end users of those batches only.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from tollgate.accounting.aggregates import OTHER_USERS, USER_FIELDS, Batch, add_user_counts
from tollgate.errors import StoreError

__all__ = ["QUOTA_FIELDS", "FileUsageStore", "MemoryUsageStore", "RedisUsageStore", "UsageStore", "days_of_month"]

# The monthly fields the quota check needs, in this order.
QUOTA_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_n")
Claim = tuple[str, str, str]  # tenant, month, alert name


def days_of_month(month: str) -> list[str]:
    year, mon = int(month[:4]), int(month[5:7])
    return [f"{month}-{d:02d}" for d in range(1, calendar.monthrange(year, mon)[1] + 1)]


class UsageStore(Protocol):
    description: str

    async def apply(self, batch: Batch) -> dict[tuple[str, str], dict[str, int]]: ...

    async def claim(self, claims: Sequence[Claim]) -> list[bool]: ...

    async def fired(self, tenant: str, month: str) -> list[str]: ...

    async def read(self, tenant: str, month: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]: ...

    async def tenants(self, month: str) -> list[str]: ...

    async def users(self, tenant: str, month: str, user: str | None = None) -> dict[str, dict[str, int]]: ...

    async def close(self) -> None: ...


def _user_fields(counts: list[int]) -> dict[str, int]:
    return dict(zip(USER_FIELDS, counts))


class _Doc:
    """The aggregates as one JSON-able document: ``months`` / ``days`` / ``alerts`` / ``users``: tenant -> period -> data."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.months: dict[str, dict[str, dict[str, int]]] = data.get("months", {})
        self.days: dict[str, dict[str, dict[str, int]]] = data.get("days", {})
        self.alerts: dict[str, dict[str, list[str]]] = data.get("alerts", {})
        # tenant -> month -> end user -> USER_FIELDS in order
        self.users: dict[str, dict[str, dict[str, list[int]]]] = data.get("users", {})

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"version": 1, "months": self.months, "days": self.days, "alerts": self.alerts, "users": self.users}
        )

    def apply_users(self, batch: Batch, max_users: int) -> None:
        """Add the batch's end users; a new one past ``max_users`` in its tenant's month is added to OTHER_USERS."""
        if not max_users:
            return
        for (tenant, month), users in batch.users.items():
            table = self.users.setdefault(tenant, {}).setdefault(month, {})
            for user, counts in users.items():
                if user not in table and len(table) - (OTHER_USERS in table) >= max_users:
                    user = OTHER_USERS
                add_user_counts(table, user, counts)

    def read_users(self, tenant: str, month: str, user: str | None) -> dict[str, dict[str, int]]:
        table = self.users.get(tenant, {}).get(month, {})
        if user is not None:
            return {user: _user_fields(table[user])} if user in table else {}
        return {u: _user_fields(c) for u, c in table.items()}

    def apply(self, batch: Batch) -> dict[tuple[str, str], dict[str, int]]:
        for (tenant, day), fields in batch.days.items():
            target = self.days.setdefault(tenant, {}).setdefault(day, {})
            for f, v in fields.items():
                target[f] = target.get(f, 0) + v
        totals = {}
        for (tenant, month), fields in batch.months.items():
            target = self.months.setdefault(tenant, {}).setdefault(month, {})
            for f, v in fields.items():
                target[f] = target.get(f, 0) + v
            totals[(tenant, month)] = {f: target.get(f, 0) for f in QUOTA_FIELDS}
        return totals

    def claim(self, claims: Sequence[Claim]) -> list[bool]:
        out = []
        for tenant, month, name in claims:
            fired = self.alerts.setdefault(tenant, {}).setdefault(month, [])
            out.append(name not in fired)
            if name not in fired:
                fired.append(name)
        return out

    def prune(self, now: float, daily_ttl: float, monthly_ttl: float) -> None:
        """Drop periods whose TTL has run out, counted from the period's end (as the Redis TTLs are refreshed)."""
        oldest_day = time.strftime("%Y-%m-%d", time.gmtime(now - daily_ttl))
        oldest_month = time.strftime("%Y-%m", time.gmtime(now - monthly_ttl))
        tables: tuple[tuple[dict[str, dict[str, Any]], str], ...] = (
            (self.days, oldest_day),
            (self.months, oldest_month),
            (self.alerts, oldest_month),
            (self.users, oldest_month),
        )
        for table, oldest in tables:
            for tenant in list(table):
                periods = table[tenant]
                for p in [p for p in periods if p < oldest]:
                    del periods[p]
                if not periods:
                    del table[tenant]

    def read(self, tenant: str, month: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        days = {d: dict(v) for d, v in self.days.get(tenant, {}).items() if d.startswith(month)}
        return dict(self.months.get(tenant, {}).get(month, {})), days

    def tenants(self, month: str) -> list[str]:
        return sorted(t for t, periods in self.months.items() if month in periods)


class MemoryUsageStore:
    """Aggregates in this process only: lost on restart (for tests and throwaway setups)."""

    description = "memory"

    def __init__(
        self, daily_ttl: float, monthly_ttl: float, clock: Any = time.time, *, max_end_users: int = 10_000
    ) -> None:
        self._doc = _Doc()
        self._ttls = (daily_ttl, monthly_ttl)
        self._clock = clock
        self._max_users = max_end_users

    async def apply(self, batch: Batch) -> dict[tuple[str, str], dict[str, int]]:
        totals = self._doc.apply(batch)
        self._doc.apply_users(batch, self._max_users)
        self._doc.prune(self._clock(), *self._ttls)
        return totals

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        return self._doc.claim(claims)

    async def fired(self, tenant: str, month: str) -> list[str]:
        return list(self._doc.alerts.get(tenant, {}).get(month, []))

    async def read(self, tenant: str, month: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        return self._doc.read(tenant, month)

    async def tenants(self, month: str) -> list[str]:
        return self._doc.tenants(month)

    async def users(self, tenant: str, month: str, user: str | None = None) -> dict[str, dict[str, int]]:
        return self._doc.read_users(tenant, month, user)

    async def close(self) -> None:
        return None


class FileUsageStore:
    """Aggregates in one JSON file, shared by the processes of one machine.

    Each batch is a read-modify-write under an exclusive ``flock`` of
    ``<path>.lock``, written to a temporary file, fsynced and renamed over the
    old one, so a crash leaves either the old or the new file, never half of
    one. The file work runs in a worker thread, never in the event loop.
    """

    def __init__(
        self,
        path: str | Path,
        daily_ttl: float,
        monthly_ttl: float,
        clock: Any = time.time,
        *,
        max_end_users: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self._max_users = max_end_users
        self.description = f"file {self.path}"
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._ttls = (daily_ttl, monthly_ttl)
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Any:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _load(self) -> _Doc:
        try:
            return _Doc(orjson.loads(self.path.read_bytes()))
        except FileNotFoundError:
            return _Doc()
        except (OSError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"cannot read usage file {self.path}: {exc}") from exc

    def _save(self, doc: _Doc) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(doc.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _update(self, change: Any) -> Any:
        try:
            with self._locked():
                doc = self._load()
                result = change(doc)
                doc.prune(self._clock(), *self._ttls)
                self._save(doc)
                return result
        except OSError as exc:
            raise StoreError(f"cannot write usage file {self.path}: {exc}") from exc

    def _read(self) -> _Doc:
        try:
            with self._locked():
                return self._load()
        except OSError as exc:
            raise StoreError(f"cannot read usage file {self.path}: {exc}") from exc

    async def apply(self, batch: Batch) -> dict[tuple[str, str], dict[str, int]]:
        def change(doc: _Doc) -> dict[tuple[str, str], dict[str, int]]:
            totals = doc.apply(batch)
            doc.apply_users(batch, self._max_users)
            return totals

        return await asyncio.to_thread(self._update, change)

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        return await asyncio.to_thread(self._update, lambda doc: doc.claim(claims))

    async def fired(self, tenant: str, month: str) -> list[str]:
        doc = await asyncio.to_thread(self._read)
        return list(doc.alerts.get(tenant, {}).get(month, []))

    async def read(self, tenant: str, month: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        doc = await asyncio.to_thread(self._read)
        return doc.read(tenant, month)

    async def tenants(self, month: str) -> list[str]:
        doc = await asyncio.to_thread(self._read)
        return doc.tenants(month)

    async def users(self, tenant: str, month: str, user: str | None = None) -> dict[str, dict[str, int]]:
        doc = await asyncio.to_thread(self._read)
        return doc.read_users(tenant, month, user)

    async def close(self) -> None:
        return None


class RedisUsageStore:
    """Aggregates as Redis hashes with TTLs; every key of a tenant carries the ``{tenant}`` hash tag."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        daily_ttl: float,
        monthly_ttl: float,
        *,
        transaction: bool = True,
        max_end_users: int = 10_000,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._daily_ttl = int(daily_ttl)
        self._monthly_ttl = int(monthly_ttl)
        self._transaction = transaction
        self._max_users = max_end_users
        self.description = f"redis ({prefix}:*)"

    def month_key(self, tenant: str, month: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:m:{month}"

    def day_key(self, tenant: str, day: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:d:{day}"

    def alert_key(self, tenant: str, month: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:alerts:{month}"

    def tenants_key(self, month: str) -> str:
        return f"{self._prefix}:tenants:{month}"

    def users_key(self, tenant: str, month: str) -> str:
        """A hash with the field ``<field>:<end user>`` for each of USER_FIELDS of each end user kept apart."""
        return f"{self._prefix}:{{{tenant}}}:u:{month}"

    async def _run(self, pipe: Any, what: str) -> list[Any]:
        from redis.exceptions import RedisError

        try:
            return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc

    async def apply(self, batch: Batch) -> dict[tuple[str, str], dict[str, int]]:
        pipe = self._redis.pipeline(transaction=self._transaction)
        order: list[tuple[str, str]] = []
        for (tenant, day), fields in batch.days.items():
            key = self.day_key(tenant, day)
            for f, v in fields.items():
                pipe.hincrby(key, f, v)
            pipe.expire(key, self._daily_ttl)
        for (tenant, month), fields in batch.months.items():
            key = self.month_key(tenant, month)
            for f in QUOTA_FIELDS:  # first, so their replies are the new totals
                pipe.hincrby(key, f, fields.get(f, 0))
            for f, v in fields.items():
                if f not in QUOTA_FIELDS:
                    pipe.hincrby(key, f, v)
            pipe.expire(key, self._monthly_ttl)
            pipe.sadd(self.tenants_key(month), tenant)
            pipe.expire(self.tenants_key(month), self._monthly_ttl)
            order.append((tenant, month))
        for (tenant, month), users in (await self._admitted_users(batch)).items():
            key = self.users_key(tenant, month)
            for user, counts in users.items():
                for f, v in zip(USER_FIELDS, counts):
                    pipe.hincrby(key, f"{f}:{user}", v)  # every field, even 0: the hash holds len(USER_FIELDS) per user
            pipe.expire(key, self._monthly_ttl)
        replies = await self._run(pipe, "usage batch")
        # Walk the replies in the order the commands were queued.
        i = sum(len(fields) + 1 for fields in batch.days.values())
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for (tenant, month), fields in batch.months.items():
            totals[(tenant, month)] = {f: int(replies[i + j]) for j, f in enumerate(QUOTA_FIELDS)}
            i += len(QUOTA_FIELDS) + sum(1 for f in fields if f not in QUOTA_FIELDS) + 3
        return totals

    async def _admitted_users(self, batch: Batch) -> dict[tuple[str, str], dict[str, list[int]]]:
        """The batch's end users as they are to be written: a new one past max_end_users goes to OTHER_USERS.

        One round trip asks how many end users each hash holds and which of
        the batch's it holds already.
        """
        if not self._max_users or not batch.users:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for (tenant, month), users in batch.users.items():
            key = self.users_key(tenant, month)
            pipe.hlen(key)
            pipe.hexists(key, f"{USER_FIELDS[0]}:{OTHER_USERS}")
            for user in users:
                pipe.hexists(key, f"{USER_FIELDS[0]}:{user}")
        replies = await self._run(pipe, "end-user check")
        out: dict[tuple[str, str], dict[str, list[int]]] = {}
        i = 0
        for (tenant, month), users in batch.users.items():
            room = self._max_users - (int(replies[i]) // len(USER_FIELDS) - (1 if replies[i + 1] else 0))
            i += 2
            admitted: dict[str, list[int]] = {}
            out[(tenant, month)] = admitted
            for user in users:
                held = bool(replies[i])
                i += 1
                if not held:
                    if room > 0:
                        room -= 1
                    else:
                        add_user_counts(admitted, OTHER_USERS, users[user])
                        continue
                add_user_counts(admitted, user, users[user])
        return out

    async def claim(self, claims: Sequence[Claim]) -> list[bool]:
        pipe = self._redis.pipeline(transaction=False)
        for tenant, month, name in claims:
            key = self.alert_key(tenant, month)
            pipe.hsetnx(key, name, int(time.time()))
            pipe.expire(key, self._monthly_ttl)
        replies = await self._run(pipe, "alert claim")
        return [bool(replies[2 * i]) for i in range(len(claims))]

    async def fired(self, tenant: str, month: str) -> list[str]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hkeys(self.alert_key(tenant, month))
        (names,) = await self._run(pipe, "alert read")
        return sorted(n.decode() if isinstance(n, bytes) else n for n in names)

    async def read(self, tenant: str, month: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        days = days_of_month(month)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(self.month_key(tenant, month))
        for day in days:
            pipe.hgetall(self.day_key(tenant, day))
        replies = await self._run(pipe, "usage read")
        return _decode(replies[0]), {day: _decode(r) for day, r in zip(days, replies[1:]) if r}

    async def tenants(self, month: str) -> list[str]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.smembers(self.tenants_key(month))
        (members,) = await self._run(pipe, "tenant list")
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)

    async def users(self, tenant: str, month: str, user: str | None = None) -> dict[str, dict[str, int]]:
        key = self.users_key(tenant, month)
        pipe = self._redis.pipeline(transaction=False)
        if user is not None:
            pipe.hmget(key, [f"{f}:{user}" for f in USER_FIELDS])
            (values,) = await self._run(pipe, "end-user usage read")
            if all(v is None for v in values):
                return {}
            return {user: {f: int(v or 0) for f, v in zip(USER_FIELDS, values)}}
        pipe.hgetall(key)
        (fields,) = await self._run(pipe, "end-user usage read")
        out: dict[str, dict[str, int]] = {}
        for raw_name, raw_value in fields.items():
            name = raw_name.decode() if isinstance(raw_name, bytes) else raw_name
            f, _, u = name.partition(":")
            out.setdefault(u, dict.fromkeys(USER_FIELDS, 0))[f] = int(raw_value)
        return out

    async def close(self) -> None:
        return None  # the client is owned by whoever made it


def _decode(fields: dict[Any, Any]) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in fields.items()}
