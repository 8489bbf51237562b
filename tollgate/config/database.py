"""The ``database:`` section: where the data of record lives (SQLite for one process, PostgreSQL for a fleet).

::

    database:
      url: sqlite:///tollgate.db         # relative to the config file; or postgresql://user:pass@host:5432/db
      pool_size: 10                      # PostgreSQL connections at most, per process
      timeout: 5s                        # one statement's time budget (PostgreSQL), then DatabaseUnavailable
      retention: 90d                     # spend rows older than this are deleted (absent: kept)
      buffer: {memory_rows: 100000, spill_path: spend.spill, spill_max_bytes: 1GiB}

Without ``url`` there is no database (the registry and accounting stores stay as their own sections say).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, Strict

from tollgate.config.validation import Found, check, section
from tollgate.config.values import Duration, OptionalDuration, Size, Str

__all__ = ["DATABASE_SCHEMES", "DatabaseBuffer", "DatabaseConfig", "url_scheme_problem"]

DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


def url_scheme_problem(url: str) -> str | None:
    """Why ``url`` cannot name a database, or None (the engine parses the rest when it opens)."""
    if not url.startswith(DATABASE_SCHEMES):
        return "must be a sqlite:///path or postgresql://user:password@host:port/database URL"
    if url.startswith("sqlite:///") and not url[len("sqlite:///") :]:
        return "sqlite:/// needs a file path (or :memory:)"
    return None


@section
@dataclass(frozen=True, slots=True)
class DatabaseBuffer:
    """Where spend rows wait while the database is down: memory first, then a local file, then counted drops."""

    memory_rows: Annotated[int, Strict(), Field(ge=1, le=100_000_000)] = 100_000
    """Spend rows kept in memory while the database is down (plus what arrives during one attempt, at most
    database.timeout of traffic); past it they go to the spill file."""
    spill_path: Str | None = None
    """The local file (JSON lines) rows past memory_rows go to, relative to the config file; absent: next to the
    SQLite file, or next to the config file (no config file and PostgreSQL: no spill, rows past memory_rows are
    dropped). Written to the database, then removed, when it answers again, also at the next start."""
    spill_max_bytes: Size = 1024 * 1024 * 1024
    """The spill file's bound (1 GiB: about 2.5 million rows); past memory_rows and this, rows are dropped and counted
    in tollgate_spend_rows_dropped_total."""


@section
@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """The database of record: tenants, keys, rules, the spend log, usage, audit, scaling history."""

    url: Str | None = None
    """sqlite:///path (relative to the config file) or postgresql://user:password@host:port/database."""
    pool_size: Annotated[int, Strict(), Field(ge=1, le=1000)] = 10
    """PostgreSQL connections at most, per process."""
    timeout: Duration = 5.0
    """One statement's time budget (PostgreSQL) and the connect timeout."""
    retention: OptionalDuration = None
    """Spend rows older than this are deleted, 10,000 a statement, at start and every hour; absent: kept for ever."""
    buffer: DatabaseBuffer = DatabaseBuffer()

    @check
    def url_names_a_database(self) -> Found:
        if self.url is not None:
            problem = url_scheme_problem(self.url)
            if problem is not None:
                yield "url", problem
