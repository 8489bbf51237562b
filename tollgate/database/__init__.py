"""The database of record (SQLite for one process, PostgreSQL for a fleet): engines, migrations, schema status.

Tenants, keys, rules, the spend log, usage, audit and scaling history live
here; the request path never reads or writes it (processes keep compiled
copies in memory and write in batches).
"""

from tollgate.database.engine import Database, Dialect, Queries, masked_url, open_database
from tollgate.database.migrations import SchemaStatus, check_schema, known_migrations, migrate, schema_status

__all__ = [
    "Database",
    "Dialect",
    "Queries",
    "SchemaStatus",
    "check_schema",
    "known_migrations",
    "masked_url",
    "migrate",
    "open_database",
    "schema_status",
]
