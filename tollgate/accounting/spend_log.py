"""The per-request spend log's writer: rows from the flusher's entries, buffered, inserted in batches, spilled while the
database is down, replayed when it is back; and the retention task that deletes old rows.

Nothing here runs on the request path. The accounting flusher hands each
flush's entry fields to :meth:`SpendLog.add`, which makes them rows at once (tuples of
plain values: the collector stops tracking them, while the entry fields, which hold the
principal, would be promoted to its old generation and make full collections come
sooner); the writer task inserts what waits in one statement per wake
(tollgate/database/spend.py).

While the database fails, rows wait in memory up to ``database.buffer.memory_rows``
(plus what arrives during the one attempt in progress, at most ``database.timeout``
of traffic). Past it, the buffered rows are appended to the spill file
(``database.buffer.spill_path``, JSON lines) up to ``spill_max_bytes``; past
both, rows are dropped: counted in ``tollgate_spend_rows_dropped`` and logged
at error level at most once per :data:`DROP_LOG_INTERVAL`. When the database
answers again, the spill file is replayed first (its rows are the older), then
the memory buffer, and the file is removed. A graceful stop writes what it can
and spills the rest, and a spill file left by an earlier run is replayed at
start: an insert of a request already there does nothing, so replays never
duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
from prometheus_client import Counter

from tollgate.background import BackgroundTask
from tollgate.database.spend import DELETE_BATCH, SpendDatabase, SpendQueries, delete_spend_before, insert_spend
from tollgate.errors import StoreError

__all__ = ["DROP_LOG_INTERVAL", "SpendLog", "SpendRetention", "open_spend_log", "spend_row"]

log = logging.getLogger("tollgate.accounting.spend")

DROP_LOG_INTERVAL = 10.0
"""Seconds between two error lines about dropped spend rows (the counter counts every one)."""
_CHUNK = 10_000  # rows per insert statement
_RETRY_MIN, _RETRY_MAX = 0.5, 10.0  # seconds between attempts while the database fails (doubling)
_SPILL_SLOTS = 256  # spill files next to one spill_path at most (one per process sharing it)
_CUT_CODES = frozenset({"token_budget_exceeded", "budget_exceeded"})

Row = tuple[Any, ...]


def spend_row(f: Sequence[Any], currency: str) -> Row:
    """The spend row (tollgate/database/spend.py SPEND_COLUMNS) of an entry's fields (records.fields_of)."""
    ttfb = f[29]
    error = f[15]
    return (
        str(f[0]),
        int(f[1] * 1000.0),
        f[2],
        f[3],
        f[4],
        f[6],
        f[7],
        f[8],
        f[9],
        f[12],
        f[11],
        f[13],
        f[19],
        f[20],
        f[21],
        f[22],
        f[23],
        1 if f[24] else 0,
        f[25],
        currency,
        f[14],
        error,
        f[26] * 1000.0,
        ttfb * 1000.0 if ttfb is not None else None,
        1 if f[16] else 0,
        1 if error in _CUT_CODES else 0,
        f[30],
        1 if f[32] else 0,
    )


class SpendLog:
    """Buffers spend rows and writes them to ``database`` in batches from its own task; see the module docstring.

    ``connect`` makes the database usable (open, migrate) and is retried until
    it succeeds; ``dropped`` counts the rows lost past both bounds; ``clock``
    is a wall clock in seconds.
    """

    def __init__(
        self,
        database: SpendDatabase,
        *,
        memory_rows: int,
        spill_path: Path | None,
        spill_max_bytes: int,
        dropped: Counter | None = None,
        clock: Callable[[], float],
        connect: Callable[[], Awaitable[None]] | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.database = database
        self.memory_rows = memory_rows
        self.spill_path = spill_path
        self.spill_max_bytes = spill_max_bytes
        self._dropped_counter = dropped
        self._clock = clock
        self._connect = connect
        self._close = close
        self._connected = connect is None
        self._memory: deque[Row] = deque()
        self._spill_size = 0  # bytes in the spill file
        self._spill_offset = 0  # bytes of it already written to the database
        self._failing = False
        self._retry = _RETRY_MIN
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None  # one write at a time (the task's, or close's)
        self._task = BackgroundTask("spend-log-writer", self._run)
        self.written = 0
        self.dropped = 0
        self._drops_unlogged = 0
        self._drop_logged_at = float("-inf")
        self.retention: SpendRetention | None = None
        self._spill_lock: IO[bytes] | None = None

    # -- from the flusher -------------------------------------------------------------
    def add(self, fields: Sequence[tuple[Any, ...]], currency: str) -> None:
        """Take one flush's entry fields (records.fields_of tuples) as rows; never waits, the writer inserts them."""
        if fields:
            self._memory.extend([spend_row(f, currency) for f in fields])
            if self._wake is not None:
                self._wake.set()

    @property
    def pending(self) -> int:
        """Rows waiting in memory (not counting the spill file)."""
        return len(self._memory)

    @property
    def spilled_bytes(self) -> int:
        """Bytes in the spill file not yet written to the database."""
        return self._spill_size - self._spill_offset

    @property
    def available(self) -> bool:
        """False while the last write attempt failed."""
        return self._connected and not self._failing

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Claim a spill file (and with it what an earlier run left there), start the writer (the database may be down).

        Processes sharing a spill_path (``--workers``) each claim their own file: ``spill_path``, else
        ``spill_path.1``, ``.2``... whose ``.lock`` no running process holds; the rows of the other files no
        process holds (left by processes that stopped) are moved into the claimed one.
        """
        self._wake = asyncio.Event()
        if self.spill_path is not None:
            claimed = _claim_spill(self.spill_path)
            if claimed is None:
                log.error("spend log: every spill file next to %s is taken: no spill file here", self.spill_path)
                self.spill_path = None
            else:
                base, (self.spill_path, self._spill_lock) = self.spill_path, claimed
                await asyncio.to_thread(_adopt_orphans, base, self.spill_path)
        if self.spill_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._spill_size = self.spill_path.stat().st_size
            if self._spill_size:
                log.warning(
                    "spend log: %d bytes of rows spilled earlier in %s, replayed", self._spill_size, self.spill_path
                )
        self._task.start()
        if self.retention is not None:
            self.retention.start()

    async def close(self, *, timeout: float = 10.0) -> None:
        """Stop the writer, write what waits (for up to ``timeout`` seconds), spill what could not be written."""
        if self.retention is not None:
            await self.retention.stop()
        await self._task.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.write(), timeout)
        if self._memory:
            rows = list(self._memory)
            self._memory.clear()
            kept = await asyncio.to_thread(self._append_spill, rows) if self.spill_path is not None else 0
            self._drop(len(rows) - kept)
            if kept:
                log.error("spend log: the database is unreachable; %d rows kept in %s", kept, self.spill_path)
        self._log_drops(force=True)
        if self._spill_lock is not None:
            self._spill_lock.close()  # releases the claim
            self._spill_lock = None
        if self._close is not None and self._connected:
            with contextlib.suppress(StoreError):
                await self._close()

    async def _run(self) -> None:
        assert self._wake is not None
        next_attempt = float("-inf")
        while True:
            if self._failing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_attempt - self._clock()))
            else:
                await self._wake.wait()
            self._wake.clear()
            if self._failing and self._clock() < next_attempt:
                await self._overflow()  # between attempts: keep memory within its bound
                self._log_drops()
                continue
            try:
                await self.write()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("spend log: write failed")
                self._failing = True
            if self._failing:
                next_attempt = self._clock() + self._retry
                self._retry = min(self._retry * 2, _RETRY_MAX)

    # -- writing ----------------------------------------------------------------------
    async def write(self) -> bool:
        """Write the spill file, then the memory buffer; False when the database failed (the rows stay buffered)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._write_locked()

    async def _write_locked(self) -> bool:
        ok = await self._write_all()
        if ok:
            if self._failing:
                log.info("spend log: the database is writable again")
            self._failing = False
            self._retry = _RETRY_MIN
        else:
            if not self._failing:
                log.error(
                    "spend log: the database is unreachable; rows are buffered (memory, then %s)", self.spill_path
                )
            self._failing = True
            await self._overflow()
        self._log_drops()
        return ok

    async def _write_all(self) -> bool:
        try:
            if not self._connected:
                assert self._connect is not None
                await self._connect()
                self._connected = True
            while self.spilled_bytes > 0:
                try:
                    rows, offset = await asyncio.to_thread(self._read_spill, self._spill_offset, _CHUNK)
                except OSError as exc:
                    log.error("spend log: cannot read the spill file %s, its rows are lost: %s", self.spill_path, exc)
                    self._spill_size = self._spill_offset = 0
                    break
                await insert_spend(self.database, rows)
                self.written += len(rows)
                self._spill_offset = offset
                if offset >= self._spill_size:
                    await asyncio.to_thread(self._remove_spill)
            memory = self._memory
            while memory:
                if len(memory) <= _CHUNK:
                    batch = list(memory)
                    memory.clear()
                else:
                    batch = [memory.popleft() for _ in range(_CHUNK)]
                try:
                    await insert_spend(self.database, batch)
                except BaseException:
                    memory.extendleft(reversed(batch))
                    raise
                self.written += len(batch)
        except StoreError as exc:
            if not self._failing:
                log.warning("spend log: write failed: %s", exc)
            return False
        return True

    async def _overflow(self) -> None:
        """Past memory_rows: move the buffer to the spill file (oldest first), dropping what does not fit."""
        memory = self._memory
        if len(memory) <= self.memory_rows:
            return
        if self.spill_path is None:
            excess = len(memory) - self.memory_rows
            for _ in range(excess):
                memory.pop()
            self._drop(excess)
            return
        rows = list(memory)
        memory.clear()
        kept = await asyncio.to_thread(self._append_spill, rows)
        # What the file did not take stays in memory (newer than the file's rows), up to memory_rows.
        rest = rows[kept : kept + self.memory_rows]
        memory.extendleft(reversed(rest))
        self._drop(len(rows) - kept - len(rest))

    def _drop(self, n: int) -> None:
        if n <= 0:
            return
        self.dropped += n
        self._drops_unlogged += n
        if self._dropped_counter is not None:
            self._dropped_counter.inc(n)

    def _log_drops(self, *, force: bool = False) -> None:
        if not self._drops_unlogged:
            return
        now = self._clock()
        if force or now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            log.error(
                "spend log: %d rows dropped: the database is unreachable and the buffer is full "
                "(%d rows in memory, %d bytes in %s)",
                self._drops_unlogged,
                self.memory_rows,
                self.spill_max_bytes,
                self.spill_path,
            )
            self._drops_unlogged = 0
            self._drop_logged_at = now

    # -- the spill file (in a worker thread) --------------------------------------------
    def _append_spill(self, rows: Iterable[Row]) -> int:
        """Append rows as JSON lines while they fit under spill_max_bytes; how many were written."""
        assert self.spill_path is not None
        room = self.spill_max_bytes - self._spill_size
        lines: list[bytes] = []
        size = 0
        for row in rows:
            line = orjson.dumps(row) + b"\n"
            if size + len(line) > room:
                break
            lines.append(line)
            size += len(line)
        if not lines:
            return 0
        try:
            self.spill_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spill_path.open("ab") as out:
                out.write(b"".join(lines))
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            log.error("spend log: cannot write the spill file %s: %s", self.spill_path, exc)
            return 0
        self._spill_size += size
        return len(lines)

    def _read_spill(self, offset: int, n: int) -> tuple[list[Row], int]:
        """Up to ``n`` rows from byte ``offset`` of the spill file, and the offset after them."""
        assert self.spill_path is not None
        rows: list[Row] = []
        with self.spill_path.open("rb") as spill:
            spill.seek(offset)
            while len(rows) < n:
                line = spill.readline()
                if not line:
                    return rows, self._spill_size
                if not line.endswith(b"\n"):  # a torn last line (crash mid-write): nothing more to read
                    offset = self._spill_size
                    break
                offset += len(line)
                with contextlib.suppress(orjson.JSONDecodeError):
                    rows.append(tuple(orjson.loads(line)))
        return rows, offset

    def _remove_spill(self) -> None:
        assert self.spill_path is not None
        with contextlib.suppress(FileNotFoundError):
            self.spill_path.unlink()
        self._spill_size = self._spill_offset = 0


class SpendRetention:
    """Deletes spend rows older than ``retention`` seconds, :data:`~tollgate.database.spend.DELETE_BATCH` at a time,
    at start and then every ``every`` seconds. Deletes are idempotent: every process may run it."""

    def __init__(
        self,
        database: SpendQueries,
        retention: float,
        *,
        clock: Callable[[], float],
        every: float = 3600.0,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.database = database
        self.retention = retention
        self.every = every
        self._clock = clock
        self._ready = ready
        self._task = BackgroundTask("spend-log-retention", self._run)
        self.deleted = 0

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def run_once(self, *, batch: int = DELETE_BATCH) -> int:
        """Delete every row past retention, batch by batch; how many."""
        cutoff = int((self._clock() - self.retention) * 1000.0)
        total = 0
        while True:
            n = await delete_spend_before(self.database, cutoff, batch=batch)
            total += n
            if n < batch:
                break
            await asyncio.sleep(0)
        self.deleted += total
        return total

    async def _run(self) -> None:
        while True:
            done = False
            if self._ready():
                try:
                    n = await self.run_once()
                    done = True
                    if n:
                        log.info("spend log: retention deleted %d rows", n)
                except StoreError as exc:
                    log.warning("spend log: retention delete failed (retried later): %s", exc)
            await asyncio.sleep(self.every if done else min(_RETRY_MAX, self.every))


def open_spend_log(
    config: Any, *, database: Any = None, base_dir: Path | None, metrics: Any, clock: Callable[[], float]
) -> SpendLog | None:
    """The spend log of the ``database:`` section ``config`` (tollgate/config/database.py); None without a URL.

    ``database`` is the process's Database (tollgate/runtime/state.py opens and migrates it); without one the
    spend log opens its own from the URL, and migrates it, retrying while it is down. The spill file is
    ``buffer.spill_path`` (relative to ``base_dir``), else next to a SQLite file, else next to the config file;
    without any of them, rows past memory_rows are dropped.
    """
    url = getattr(config, "url", None)
    if url is None:
        return None
    connect: Callable[[], Awaitable[None]] | None = None
    close: Callable[[], Awaitable[None]] | None = None
    if database is None:
        from tollgate.database import migrate, open_database

        own = open_database(url, base_dir=base_dir, pool_size=config.pool_size, timeout=config.timeout)

        async def connect() -> None:
            await own.open()
            try:
                await migrate(own)
            except BaseException:
                await own.close()
                raise

        database, close = own, own.close
    buffer = config.buffer
    spill = _spill_path(url, buffer.spill_path, base_dir)
    if spill is None:
        log.warning("spend log: no spill file (database.buffer.spill_path): rows past memory_rows are dropped")
    registry = None if metrics.multiprocess_path else metrics.registry
    dropped = Counter(
        "tollgate_spend_rows_dropped",
        "Spend rows dropped: the database was unreachable and both the memory buffer and the spill file were full.",
        (),
        registry=registry,
    )
    spend = SpendLog(
        database,
        memory_rows=buffer.memory_rows,
        spill_path=spill,
        spill_max_bytes=buffer.spill_max_bytes,
        dropped=dropped,
        clock=clock,
        connect=connect,
        close=close,
    )
    if config.retention is not None:
        spend.retention = SpendRetention(database, config.retention, clock=clock, ready=lambda: spend.available)
    return spend


def _claim_spill(base: Path) -> tuple[Path, IO[bytes]] | None:
    """The first of ``base``, ``base.1``, ``base.2``... whose lock file no other process holds, and that lock."""
    with contextlib.suppress(OSError):
        base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(_SPILL_SLOTS):
        path = base if n == 0 else base.with_name(f"{base.name}.{n}")
        try:
            lock = path.with_name(path.name + ".lock").open("ab")
        except OSError as exc:
            log.error("spend log: cannot open the spill file's lock %s: %s", path, exc)
            return None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        return path, lock
    return None


def _adopt_orphans(base: Path, own: Path) -> None:
    """Append to ``own`` every spill file next to ``base`` that no process holds, and remove it."""
    for n in range(_SPILL_SLOTS):
        path = base if n == 0 else base.with_name(f"{base.name}.{n}")
        if path == own or not path.exists():
            continue
        try:
            with path.with_name(path.name + ".lock").open("ab") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                data = path.read_bytes()
                if data and not data.endswith(b"\n"):  # a torn last line
                    data = data[: data.rfind(b"\n") + 1]
                with own.open("ab") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                path.unlink()
        except OSError:
            continue  # held by a running process, or unreadable: left as it is


def _spill_path(url: str, configured: str | None, base_dir: Path | None) -> Path | None:
    if configured is not None:
        p = Path(configured)
        return p if p.is_absolute() or base_dir is None else base_dir / p
    name = url[len("sqlite:///") :] if url.startswith("sqlite:///") else None
    if name is not None and name != ":memory:":
        db = Path(name)
        if not db.is_absolute() and base_dir is not None:
            db = base_dir / db
        return db.with_name(db.name + ".spend-spill.jsonl")
    return base_dir / "tollgate-spend-spill.jsonl" if base_dir is not None else None
