"""The SQLite engine: APSW on one dedicated thread per Database, WAL mode, statements serialised.

Every statement runs on the Database's own single-worker executor, so the
event loop never blocks on the file and the connection never changes thread.
An asyncio lock orders the statements of concurrent tasks; a transaction
holds it from ``BEGIN IMMEDIATE`` to ``COMMIT``, so another task's statement
never lands inside it. Between processes, SQLite's own file lock with a 5 s
``busy_timeout`` makes writers queue. A bulk insert (:meth:`SqliteDatabase.copy_records`)
is one executemany in one transaction, in a single call to the thread (measured:
one INSERT of many VALUES rows per statement costs as much CPU or more).

APSW, not the stdlib's sqlite3: the spend log's bulk insert runs on this
thread, inside the gateway's process, at every request's end. Measured on a
1,000-row batch of 28-column spend rows (benchmarks/spend_writer_bench.py),
APSW binds and steps a row in about 17 K instructions against sqlite3's 29 K
(2.2 against 3.3 µs a row), and it brings its own, current SQLite whatever the
system's. Its connection has no implicit transactions: every statement commits
alone unless it runs between ``BEGIN IMMEDIATE`` and ``COMMIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import apsw

from tollgate.database.engine import Database, Queries
from tollgate.errors import DatabaseError, DatabaseUnavailable

__all__ = ["SqliteDatabase"]

T = TypeVar("T")
_PLACEHOLDER = re.compile(r"\$(\d+)")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_STATEMENT_CACHE = 512  # distinct statements remembered with their placeholders rewritten
# The errors that mean "the file cannot be used now", not "the statement is wrong".
_UNAVAILABLE: tuple[type[apsw.Error], ...] = (
    apsw.BusyError,
    apsw.LockedError,
    apsw.CantOpenError,
    apsw.IOError,
    apsw.ReadOnlyError,
    apsw.FullError,
    apsw.NotADBError,
    apsw.PermissionsError,
    apsw.CorruptError,
)


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path | str, *, timeout: float = 5.0) -> None:
        self.path = path
        self.description = f"sqlite:///{path}"
        self._busy_ms = int(max(timeout, 5.0) * 1000)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: apsw.Connection | None = None
        self._lock = asyncio.Lock()
        self._statements: dict[str, str] = {}
        self._copies: dict[tuple[str, tuple[str, ...]], str] = {}  # (table, columns) -> INSERT of copy_records

    # -- on the database thread -----------------------------------------------------------

    def _connect(self) -> None:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = apsw.Connection(str(self.path))
        try:
            conn.set_busy_timeout(self._busy_ms)
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _sql(self, sql: str) -> str:
        rewritten = self._statements.get(sql)
        if rewritten is None:
            rewritten = _PLACEHOLDER.sub(r"?\1", sql)
            if len(self._statements) >= _STATEMENT_CACHE:
                self._statements.clear()
            self._statements[sql] = rewritten
        return rewritten

    def _run(self, fn: Callable[[apsw.Connection], T], sql: str) -> T:
        conn = self._conn
        if conn is None:
            raise DatabaseUnavailable(f"{self.description} is not open")
        try:
            return fn(conn)
        except apsw.Error as exc:
            raise _wrapped(exc, sql, self.description) from exc

    def _copy(self, conn: apsw.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise

    # -- from the event loop --------------------------------------------------------------

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise DatabaseUnavailable(f"{self.description} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollgate-sqlite")
        try:
            await self._call(self._connect)
        except apsw.Error as exc:
            await self.close()
            raise DatabaseUnavailable(f"cannot open {self.description}: {exc}") from exc
        except OSError as exc:
            await self.close()
            raise DatabaseUnavailable(f"cannot open {self.description}: {exc.strerror or exc}") from exc

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn = self._conn

        def shut() -> None:
            if conn is not None:
                conn.close()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, shut)
        finally:
            self._conn = None
            executor.shutdown(wait=False)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await self._execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._lock:
            await self._executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._lock:
            return await self._fetch(sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        async with self._lock:
            return await self._fetchrow(sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._lock:
            row = await self._fetchrow(sql, args)
        return None if row is None else row[0]

    async def _execute(self, sql: str, args: Sequence[Any]) -> int:
        q = self._sql(sql)
        return await self._call(lambda: self._run(lambda c: _changes(c, q, args), sql))

    async def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        q = self._sql(sql)
        data = [tuple(r) for r in rows]
        await self._call(lambda: self._run(lambda c: c.executemany(q, data), sql))

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        q = self._sql(sql)
        return await self._call(lambda: self._run(lambda c: c.execute(q, tuple(args)).fetchall(), sql))

    async def _fetchrow(self, sql: str, args: Sequence[Any]) -> tuple[Any, ...] | None:
        q = self._sql(sql)
        row: tuple[Any, ...] | None = await self._call(
            lambda: self._run(lambda c: c.execute(q, tuple(args)).fetchone(), sql)
        )
        return row

    async def copy_records(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        key = (table, tuple(columns))
        sql = self._copies.get(key)
        if sql is None:
            for name in key[0], *key[1]:
                if _IDENTIFIER.match(name) is None:
                    raise DatabaseError(f"{self.description}: not a plain name: {name!r}")
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
            if len(self._copies) >= _STATEMENT_CACHE:
                self._copies.clear()
            self._copies[key] = sql
        async with self._lock:
            await self._call(lambda: self._run(lambda c: self._copy(c, sql, rows), sql))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Queries]:
        async with self._lock:
            await self._call(lambda: self._run(lambda c: c.execute("BEGIN IMMEDIATE"), "BEGIN IMMEDIATE"))
            try:
                yield _Transaction(self)
            except BaseException:
                with contextlib.suppress(DatabaseError):
                    await self._call(lambda: self._run(lambda c: c.execute("ROLLBACK"), "ROLLBACK"))
                raise
            await self._call(lambda: self._run(lambda c: c.execute("COMMIT"), "COMMIT"))


class _Transaction:
    """The statements of an open transaction: the Database's own, without taking its lock again."""

    __slots__ = ("_db",)

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._db._execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._db._executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self._db._fetch(sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None:
        return await self._db._fetchrow(sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self._db._fetchrow(sql, args)
        return None if row is None else row[0]


def _changes(conn: apsw.Connection, sql: str, args: Sequence[Any]) -> int:
    """Run one statement to its end; the rows it inserted, updated or deleted (0 for any other statement)."""
    before = conn.total_changes()
    conn.execute(sql, tuple(args)).fetchall()
    return conn.total_changes() - before


def _wrapped(exc: apsw.Error, sql: str, description: str) -> DatabaseError:
    text = str(exc)
    statement = " ".join(sql.split())[:80]
    if isinstance(exc, _UNAVAILABLE):
        return DatabaseUnavailable(f"{description}: {text} (in: {statement})")
    return DatabaseError(f"{description}: {text} (in: {statement})")
