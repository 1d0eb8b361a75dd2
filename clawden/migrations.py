"""Named SQLite migrations, applied once each and atomically, for the services that own a database."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence


def apply(conn: sqlite3.Connection, migrations: Sequence[tuple[str, str]]) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; returns their names."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, at REAL)")
    done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in migrations:
        if name in done:
            continue
        # executescript commits first, so the BEGIN/COMMIT pair makes the migration atomic.
        try:
            conn.executescript(f"BEGIN IMMEDIATE; {sql}; INSERT INTO migrations VALUES ('{name}', {time.time()});"
                               " COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied
