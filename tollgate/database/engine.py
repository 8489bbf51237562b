"""The database engine contract: one async API over SQLite and PostgreSQL, and :func:`open_database` to pick one.

SQL is written once, with PostgreSQL's ``$1, $2...`` placeholders and the
portable types (BIGINT, INTEGER, TEXT, DOUBLE PRECISION, SMALLINT for
booleans, times as epoch milliseconds, JSON as TEXT); the SQLite engine
rewrites the placeholders. Every driver error comes out wrapped:
:class:`~tollgate.errors.DatabaseUnavailable` when the database cannot be
reached or the connection broke (the caller may buffer and retry),
:class:`~tollgate.errors.DatabaseError` otherwise.

    db = open_database("sqlite:///tollgate.db", base_dir=config_dir)
    await db.open()
    async with db.transaction() as tx:     # committed on exit, rolled back on an exception
        await tx.execute("INSERT INTO t (a, b) VALUES ($1, $2)", 1, "x")
    await db.close()
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from tollgate.config.database import url_scheme_problem
from tollgate.errors import ConfigError

__all__ = ["Database", "Dialect", "Listener", "Queries", "Unlisten", "masked_url", "open_database"]

Dialect = Literal["sqlite", "postgresql"]
Listener = Callable[[str], None]  # called with a notification's payload
Unlisten = Callable[[], Awaitable[None]]


class Queries(Protocol):
    """What runs statements: a :class:`Database`, or the transaction it yields."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed (0 when it changes none)."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row; None when there is no row."""
        ...


class Database(abc.ABC):
    """A database of record, not yet connected until :meth:`open`; its statements are :class:`Queries`."""

    dialect: Dialect
    description: str  # the URL without its password: for logs, errors and the CLI

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (PostgreSQL: the pool; SQLite: the file, in WAL mode). Raises DatabaseUnavailable."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int: ...

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    async def fetchrow(self, sql: str, *args: Any) -> tuple[Any, ...] | None: ...

    @abc.abstractmethod
    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    @abc.abstractmethod
    async def copy_records(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (values in ``columns`` order) into ``table`` in one transaction of its own, skipping a
        row whose key is there already (``ON CONFLICT DO NOTHING``): a batch replayed after a failure is harmless.

        The bulk path for many rows at once: PostgreSQL copies them (binary COPY) into ``table``, and when a key
        is there already, into a temporary staging table to insert from there in one statement; SQLite inserts
        many rows per statement. ``table`` and
        ``columns`` are names from the code, never from a request.
        """

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Queries]:
        """A transaction: committed when the block ends, rolled back when it raises.

        SQLite's takes the write lock at once (``BEGIN IMMEDIATE``), so two
        writers queue instead of failing; while it runs, the same Database's
        other statements wait (use the yielded object inside the block).
        """

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every listener of ``channel`` (PostgreSQL NOTIFY); nothing on SQLite."""
        return None

    async def listen(self, channel: str, callback: Listener) -> Unlisten | None:
        """Call ``callback(payload)`` on each notification of ``channel``; None where there are none (SQLite).

        The returned coroutine function stops listening. A listener whose
        connection broke hears nothing more: callers keep polling as well.
        """
        return None


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_database(url: str, *, base_dir: Path | None = None, pool_size: int = 10, timeout: float = 5.0) -> Database:
    """The engine for ``url`` (not yet connected): ``sqlite:///path`` (relative to ``base_dir`` when given),
    ``sqlite:///:memory:``, ``postgresql://`` or ``postgres://``. Any other URL: ConfigError naming ``database.url``.

    ``pool_size`` and ``timeout`` (seconds) are ``database.pool_size`` and ``database.timeout``.
    """
    problem = url_scheme_problem(url)
    if problem is not None:
        raise ConfigError([f"database.url: {problem} (got {masked_url(url)!r})"])
    if url.startswith("sqlite:///"):
        from tollgate.database.sqlite import SqliteDatabase

        name = url[len("sqlite:///") :]
        if name == ":memory:":
            return SqliteDatabase(":memory:", timeout=timeout)
        path = Path(name)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return SqliteDatabase(path, timeout=timeout)
    from tollgate.database.postgres import PostgresDatabase

    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  # urlsplit checks the port only when asked
    except ValueError as exc:
        raise ConfigError([f"database.url: {exc} (got {masked_url(url)!r})"]) from None
    if not parts.path.strip("/") and not parts.hostname:
        raise ConfigError([f"database.url: names no host and no database (got {masked_url(url)!r})"])
    return PostgresDatabase(url, description=masked_url(url), pool_size=pool_size, timeout=timeout)
