"""The audit log: admin changes (who, what, before, after) and security events, in a capped store.

Storage: the database's ``audit_log`` table when there is a database and the
``audit:`` section names no other store; a Redis stream capped with
``XADD MAXLEN ~`` when usage goes to Redis; otherwise a JSON-lines file (trimmed to ``max_entries`` when it grows
a quarter past it), or memory. Recording is synchronous and O(1); events are
written by the accounting flusher.

Security events come from the requests themselves (:class:`SecurityWatch`):
``auth_failure_burst`` (``auth_failure_burst`` 401s from one client address
within ``auth_failure_window``) and ``suspended_tenant_access`` (the tenant and
the key refused, in that tenant's audit view; at most one per tenant and key per
window).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tollgate.accounting.db_audit import DatabaseAuditStore
from tollgate.accounting.records import Entry
from tollgate.config.accounting import AuditConfig
from tollgate.errors import StoreError

__all__ = ["AuditLog", "SecurityWatch"]


class AuditLog:
    def __init__(
        self,
        config: AuditConfig,
        *,
        redis: Any = None,
        path: Path | None = None,
        database: DatabaseAuditStore | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._redis = redis
        self._path = path
        self._database = database
        self._clock = clock
        self._pending: list[dict[str, Any]] = []
        self._memory: deque[dict[str, Any]] = deque(maxlen=config.max_entries)
        self._on_event = on_event or (lambda kind: None)
        self._seq = 0
        self.description = (
            database.description
            if database is not None
            else "redis stream " + config.stream_key
            if redis is not None
            else (f"file {path}" if path else "memory")
        )

    def record(
        self,
        kind: str,
        *,
        actor: str | None = None,
        tenant: str | None = None,
        target: str | None = None,
        before: Any = None,
        after: Any = None,
        detail: Any = None,
    ) -> None:
        """Queue one event; written at the next flush. Never raises, never waits."""
        self._seq += 1
        now = self._clock()
        self._pending.append(
            {
                "id": f"{int(now * 1000)}-{os.getpid()}-{self._seq}",
                "ts": now,
                "kind": kind,
                "actor": actor,
                "tenant": tenant,
                "target": target,
                "before": before,
                "after": after,
                "detail": detail,
            }
        )
        self._on_event(kind)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        events, self._pending = self._pending, []
        if not events:
            return
        try:
            if self._database is not None:
                await self._database.append(events)
            elif self._redis is not None:
                pipe = self._redis.pipeline(transaction=False)
                for ev in events:
                    pipe.xadd(
                        self.config.stream_key,
                        {"e": orjson.dumps(ev)},
                        maxlen=self.config.max_entries,
                        approximate=True,
                    )
                await pipe.execute()
            elif self._path is not None:
                await asyncio.to_thread(self._append, events)
            else:
                self._memory.extend(events)
        except Exception as exc:
            self._pending[:0] = events  # keep them for the next flush
            raise StoreError(f"audit log write failed: {exc}") from exc

    def _append(self, events: list[dict[str, Any]]) -> None:
        assert self._path is not None
        data = b"".join(orjson.dumps(ev, option=orjson.OPT_APPEND_NEWLINE) for ev in events)
        with open(self._path, "ab+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fh.write(data)
            fh.flush()
            fh.seek(0)
            lines = fh.read().splitlines(keepends=True)
            if len(lines) > self.config.max_entries * 5 // 4:
                keep = b"".join(lines[-self.config.max_entries :])
                tmp = self._path.with_name(self._path.name + ".tmp")
                tmp.write_bytes(keep)
                os.replace(tmp, self._path)

    def _read_file(self) -> list[dict[str, Any]]:
        assert self._path is not None
        try:
            with open(self._path, "rb") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
                raw = fh.read()
        except FileNotFoundError:
            return []
        out = []
        for line in raw.splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
        return out

    async def _events(
        self, tenant: str | None, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        if self._database is not None:
            return await self._database.events(tenant, since, until, limit)
        if self._redis is not None:
            hi = str(int(until * 1000)) if until is not None else "+"
            lo = str(int(since * 1000)) if since is not None else "-"
            out: list[dict[str, Any]] = []
            cursor = hi
            while len(out) < limit:
                rows = await self._redis.xrevrange(self.config.stream_key, max=cursor, min=lo, count=500)
                if not rows:
                    break
                for _id, fields in rows:
                    ev = orjson.loads(fields[b"e"] if b"e" in fields else fields["e"])
                    if tenant is None or ev.get("tenant") == tenant:
                        out.append(ev)
                last = rows[-1][0].decode() if isinstance(rows[-1][0], bytes) else rows[-1][0]
                cursor = "(" + last
                if len(rows) < 500:
                    break
            return out[:limit]
        events = await asyncio.to_thread(self._read_file) if self._path is not None else list(self._memory)
        picked = [
            ev
            for ev in reversed(events)
            if (tenant is None or ev.get("tenant") == tenant)
            and (since is None or ev["ts"] >= since)
            and (until is None or ev["ts"] <= until)
        ]
        return picked[:limit]

    async def list(
        self, *, tenant: str | None = None, since: float | None = None, until: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first, filtered by tenant and time (Unix seconds); :class:`StoreError` when the log cannot be read."""
        from redis.exceptions import RedisError

        try:
            return await self._events(tenant, since, until, limit)
        except (RedisError, OSError) as exc:
            raise StoreError(f"audit log read failed: {exc}") from exc


class SecurityWatch:
    """Turns request outcomes into security events in the audit log, rate-limited so a flood stays a few lines."""

    def __init__(self, config: AuditConfig, audit: AuditLog) -> None:
        self.config = config
        self.audit = audit
        self._failures: dict[str, deque[float]] = {}
        self._reported: dict[tuple[str, ...], float] = {}

    STATUSES = frozenset({401, 403})  # the only outcomes :meth:`observe` looks at

    def observe(self, e: Entry) -> None:
        if e.status == 401:
            self._auth_failure(e)
        elif e.status == 403 and e.error == "tenant_suspended":
            # The identify stage records the refused tenant and key (TenantRefused): the event is that tenant's.
            self._once(
                ("suspended", e.tenant, e.key_id or ""),
                e.wall,
                "suspended_tenant_access",
                tenant=e.tenant,
                target=f"key:{e.key_id}" if e.key_id is not None else None,
                detail={"client_ip": e.client_ip, "key_id": e.key_id, "request_id": e.request_id},
            )

    def _auth_failure(self, e: Entry) -> None:
        window = self.config.auth_failure_window
        times = self._failures.get(e.client_ip)
        if times is None:
            if len(self._failures) > 100_000:
                self._failures.clear()
            times = self._failures[e.client_ip] = deque(maxlen=self.config.auth_failure_burst)
        times.append(e.wall)
        if len(times) == times.maxlen and e.wall - times[0] <= window:
            self._once(
                ("auth", e.client_ip),
                e.wall,
                "auth_failure_burst",
                tenant=None,
                detail={"client_ip": e.client_ip, "failures": len(times), "window_s": window, "last_error": e.error},
            )

    def _once(
        self,
        key: tuple[str, ...],
        now: float,
        kind: str,
        *,
        tenant: str | None,
        detail: dict[str, Any],
        target: str | None = None,
    ) -> None:
        last = self._reported.get(key)
        if last is not None and now - last < self.config.auth_failure_window:
            return
        if len(self._reported) > 100_000:
            self._reported.clear()
        self._reported[key] = now
        self.audit.record(kind, actor="gateway", tenant=tenant, target=target, detail=detail)
