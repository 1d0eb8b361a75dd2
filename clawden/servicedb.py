"""A service's own SQLite database: WAL, a busy timeout, named migrations applied once each, and
immediate transactions; `Store`, the base of each service's store, which a service starts on its own
aiosqlite connection. (The session pair has different rules: `clawden/sessiondb.py`.)"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar, Literal, ParamSpec, Self, TypeVar, cast

import aiosqlite

# BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception: the same for a service's file as for a session's.
from clawden.sessiondb import transaction as transaction

__all__ = ["Store", "apply_migrations", "open_db", "transaction", "unwritable"]

log = logging.getLogger("clawden.servicedb")
Synchronous = Literal["NORMAL", "FULL"]
P = ParamSpec("P")
T = TypeVar("T")


# SQLite's primary result codes for a database that cannot be written now and may be later, whatever is written: a
# lock held past the busy timeout, a full disk, an I/O error, a file gone read-only or unopenable.
UNWRITABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def unwritable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be written for now (the machine's trouble, waited out), not that
    what was asked of it is wrong (a bug, or bad input)."""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", 0) & 0xFF in UNWRITABLE


def open_db(
    path: Path, migrations: Sequence[tuple[str, str]], *, synchronous: Synchronous = "FULL", foreign_keys: bool = False
) -> tuple[sqlite3.Connection, list[str]]:
    """Open (creating the folder), set the pragmas, migrate; returns the connection and what was applied.

    `isolation_level=None`: transactions are ours (`transaction()`), not the sqlite3 module's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA busy_timeout = 5000")
    if foreign_keys:
        conn.execute("PRAGMA foreign_keys = ON")
    return conn, apply_migrations(conn, migrations)


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[tuple[str, str]]) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; returns their names."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, at REAL)")
    done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in migrations:
        if name in done:
            continue
        # executescript commits first, so the BEGIN/COMMIT pair makes the migration atomic.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE; {sql}; INSERT INTO migrations VALUES ('{name}', {time.time()}); COMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


class Store:
    """A service's database on one connection: a subclass names its migrations (and the pragmas its
    file wants, where they differ) and adds what it reads and writes, as synchronous steps (each
    usually one transaction), so a test drives them without an event loop.

    A service `start`s its store instead of `open`ing it: one aiosqlite connection's own thread then
    opens the file and runs every step (`await store.run(store.step, ...)`), so SQLite never blocks
    the event loop and two steps never interleave."""

    migrations: ClassVar[Sequence[tuple[str, str]]]
    synchronous: ClassVar[Synchronous] = "FULL"
    foreign_keys: ClassVar[bool] = False

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._owner: aiosqlite.Connection | None = None  # set by start(): the thread that owns conn

    @classmethod
    async def start(cls, path: Path, *args: Any) -> Self:
        """The store on its own aiosqlite connection, opened, migrated and built (`cls(conn, *args)`)
        on that connection's thread; `stop()` closes it."""
        opened: list[sqlite3.Connection] = []

        def connect() -> sqlite3.Connection:
            opened.append(cls.connect(path))
            return opened[0]

        owner = await aiosqlite.Connection(connect, iter_chunk_size=64)
        try:
            store = await _on(owner, cls, opened[0], *args)
        except BaseException:
            await owner.close()
            raise
        store._owner = owner
        return store

    async def run(self, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`step(*args, **kwargs)` on the connection's own thread, after every step queued before it."""
        if self._owner is None:
            raise RuntimeError(f"{type(self).__name__} was opened, not started: it has no thread to run on")
        return await _on(self._owner, step, *args, **kwargs)

    async def stop(self) -> None:
        """Close the file on its thread (after the steps already queued), then end the thread."""
        if self._owner is not None:
            await self._owner.close()

    @classmethod
    def connect(cls, path: Path) -> sqlite3.Connection:
        """The store's file, opened and migrated; a migration applied now is logged."""
        conn, applied = open_db(path, cls.migrations, synchronous=cls.synchronous, foreign_keys=cls.foreign_keys)
        if applied:
            log.info("%s migrated: %s", path.name, ", ".join(applied))
        return conn

    @classmethod
    def open(cls, path: Path) -> Self:
        return cls(cls.connect(path))

    def close(self) -> None:
        self.conn.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self.conn)


def _on(owner: aiosqlite.Connection, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """`fn` queued on aiosqlite's connection thread. aiosqlite runs each of its own methods this way
    (`Connection._execute`) but offers no public name for it; tests/runtime/test_servicedb.py pins it."""
    execute = cast("Callable[..., Awaitable[T]]", owner._execute)
    return execute(functools.partial(fn, *args, **kwargs))
