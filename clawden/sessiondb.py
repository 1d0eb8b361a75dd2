"""The per-session SQLite pair shared by the runner (host) and the agent runner (container).

`inbound.db` is written only by the host, `outbound.db` only by the container; each side opens
the other's file read-only. Every write checks, in its own transaction, the folder's placement fence
(`claim`, `_writing`): a runner the session was moved away from, and its container, write nothing.
Stdlib only: this module is copied into the agent image as is.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

SCHEMA_VERSION = 3  # 2: turn_cost; 3: delivered.read_at
INBOUND = "inbound.db"
OUTBOUND = "outbound.db"
# Doorbells: datagram sockets in the session folder. The container listens on AGENT_BELL and
# the host on HOST_BELL; a ring is one empty datagram meaning "look at the other file now".
AGENT_BELL = "agent.bell"
HOST_BELL = "host.bell"
BUSY_TIMEOUT_MS = 5000
CONVERSATION_KEY = "claude_session_id"  # session_state: the Claude Code conversation to resume
CURRENT_TOOL_KEY = "current_tool"  # session_state: a declared wait (a long tool call, a person), for the host
# session_state: the group's MCP servers that failed to start, {name: why} as JSON, for `clawden status`
MCP_FAILED_KEY = "mcp_failed"
HEARTBEAT = ".heartbeat"  # in the session folder: the agent touches it while it works
# A chat row that edits or deletes an earlier one carries, in its content, REVISION ("edit" or "delete")
# and REVISES (the earlier row's id); the agent runner folds it in when it reads (clawden_agent/revisions.py).
REVISION = "revision"
REVISES = "revises"

_INBOUND_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages_in (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE CHECK (seq % 2 = 0),
    kind TEXT NOT NULL CHECK (kind IN ('chat', 'task', 'system')),
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed')),
    process_after REAL,
    tries INTEGER NOT NULL DEFAULT 0,
    trigger INTEGER NOT NULL DEFAULT 1,
    channel TEXT NOT NULL DEFAULT '',
    chat_id TEXT NOT NULL DEFAULT '',
    thread_id TEXT,
    sender_id TEXT,
    sender_name TEXT,
    content TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_in_pending ON messages_in (status, seq);
CREATE TABLE IF NOT EXISTS delivered (
    out_seq INTEGER PRIMARY KEY,
    platform_message_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('delivered', 'failed')),
    error TEXT,
    delivered_at REAL NOT NULL,
    read_at REAL  -- when the platform said the person read it (status stays 'delivered': older readers agree)
);
CREATE TABLE IF NOT EXISTS destinations (
    name TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    channel TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    thread_id TEXT
);
CREATE TABLE IF NOT EXISTS session_routing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    channel TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    thread_id TEXT
);
CREATE TABLE IF NOT EXISTS host_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    published_out_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    runner TEXT NOT NULL,
    changed_at REAL NOT NULL
);
"""
# `fence` came without a schema version of its own (an older agent image must keep reading newer folders): a file
# made before it gets the table from the first claim (`claim`), and a reader takes its absence for no fence.
_FENCE_TABLE = _INBOUND_SCHEMA[_INBOUND_SCHEMA.index("CREATE TABLE IF NOT EXISTS fence") :]

_OUTBOUND_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages_out (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE CHECK (seq % 2 = 1),
    in_reply_to INTEGER,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('chat', 'edit', 'reaction', 'file', 'card', 'question', 'task')),
    channel TEXT NOT NULL DEFAULT '',
    chat_id TEXT NOT NULL DEFAULT '',
    thread_id TEXT,
    content TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS processing_ack (
    seq INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS session_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turn_cost (
    seq INTEGER PRIMARY KEY,
    usd REAL NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    charged_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS answered (
    seq INTEGER PRIMARY KEY,  -- a claimed row the agent wrote to the chat for, in the same transaction as that write
    out_seq INTEGER NOT NULL
);
"""
# `answered` came without a schema version of its own, as `fence` did: `ensure_outbound` adds it to an older file.
_ANSWERED_TABLE = _OUTBOUND_SCHEMA[_OUTBOUND_SCHEMA.index("CREATE TABLE IF NOT EXISTS answered") :]
# Columns added to a table after it first shipped, by the version that added them. CREATE TABLE IF NOT EXISTS
# leaves an existing table as it is, so an older file gets each one with ALTER TABLE (where it has the table).
_ADDED_COLUMNS = (("delivered", "read_at", "REAL"),)


class SchemaError(RuntimeError):
    """A session database was written by a newer Clawden than this one."""


class LinkedFile(sqlite3.DatabaseError):
    """A session DB's name leads to another file (a link the agent planted in the folder it writes): nothing was
    read from or written to it."""


class NotAFile(sqlite3.DatabaseError):
    """A session DB's name, or its journal's, is no regular file (a FIFO the agent made in the folder it writes, whose
    open would wait for a writer for ever; a folder; a socket): SQLite was never asked to open it."""


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open one session DB with the pragmas both sides rely on.

    DELETE journaling because WAL's shared memory does not cross VM file sharing; connections
    are short-lived (open, work, close) so each read sees the other side's latest commit.
    """
    _check_regular(path)
    if readonly:
        _roll_back_hot_journal(path)
    else:
        _create(path)
    conn = _open(path, readonly=readonly)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = DELETE")
    return conn


def _open(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """Every open of a session DB, on both sides: the file at `path` itself, never one a link there names (raises
    LinkedFile). The agent can write the folder, so a link may be there, or appear while SQLite opens the file.

    SQLite's unix VFS resolves every link in a name before it opens the file, then opens the resolved name, and the
    journal beside it, with O_NOFOLLOW (tests/runner/test_session_links.py pins both): so the name it reports (PRAGMA
    database_list) is the file it holds, and a link swapped in after it resolved the name fails the open. A name that
    resolved anywhere but `path` is refused before a row is read. (Python's sqlite3 cannot pass SQLITE_OPEN_NOFOLLOW,
    and no URI parameter sets it.) `connect` makes the file first (`_create`, never through a link), so SQLite finds
    it there and makes none, unless a link is swapped in that instant (`_uri`). SQLite is never asked to open what
    is no regular file (`connect` checks first: `_check_regular`)."""
    # A URI for writing too, so that a write transaction may ATTACH the other file read-only (`_writing`).
    conn = sqlite3.connect(
        _uri(path, readonly=readonly), uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
    )
    try:
        _check_opened(conn, "main", path)
    except BaseException:
        conn.close()
        raise
    return conn


def _check_regular(path: Path) -> None:
    """Before SQLite opens a session DB (`connect`, `_attach_inbound`): raise unless the name, and its journal's where
    one is, holds a regular file. Found by lstat, which never waits: SQLite opens both names with a plain open(), and a
    FIFO there (the agent can make one in its folder) would hold the thread that opens it until a writer comes, which
    the agent never sends; enough such threads stall the runner. A link is refused here too, before SQLite resolves
    it (`_open` still checks what it opened). A name swapped for a FIFO in the instant between this check and SQLite's
    open is not caught: Python's sqlite3 can open no descriptor of ours, nor pass SQLite a flag not to wait."""
    for name in (path, Path(f"{path}-journal")):
        try:
            mode = os.lstat(name).st_mode
        except FileNotFoundError:
            continue  # no journal; or no file, which SQLite says as it always has
        if stat.S_ISLNK(mode):
            raise LinkedFile(f"{name} is a link: a session's file is only ever used as itself")
        if not stat.S_ISREG(mode):
            raise NotAFile(f"{name} is no regular file (a FIFO?): not opened")


def _check_opened(conn: sqlite3.Connection, schema: str, path: Path) -> None:
    """Raise LinkedFile unless the file `conn` holds as `schema` is the one named `path` (see `_open`)."""
    wanted = os.path.join(os.path.realpath(path.parent), path.name)
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == schema and row[2] != wanted:
            raise LinkedFile(f"{path} is a link (to {row[2]}): a session's file is only ever used as itself")


def _create(path: Path) -> None:
    """Make the file (empty) where there is none, by this process and never through a link.

    Never opens a file that is there: closing any descriptor of a file drops every POSIX lock this process holds on
    it, so another thread's SQLite transaction on it would lose its lock, and the other side would take its journal
    for hot and roll it back under it ("disk I/O error"). A file made here is new: nobody holds a lock on it yet."""
    if os.path.lexists(path):
        return  # `_check_regular` has looked at what is there
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return  # made meanwhile by the other side, or a link put there: SQLite's open and `_check_opened` decide
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkedFile(f"{path} is a link: a session's file is never made through one") from None
        raise
    os.close(fd)


def _uri(path: Path, *, readonly: bool = False) -> str:
    # `connect` has made the file already (`_create`): SQLite creates nothing, but in the instant a link could be
    # swapped in, and `_check_opened` then refuses what it opened.
    return f"file:{quote(os.fspath(path))}" + ("?mode=ro" if readonly else "")


def _roll_back_hot_journal(path: Path) -> None:
    """A writer killed mid-transaction leaves a hot journal, which only a read-write connection may roll
    back: until then every read-only open fails ("attempt to write a readonly database"). The runner
    restarted after such a kill reads its sessions before it writes them, so it would never get there.
    Where this side may write the file, one read-write open settles it: SQLite rolls a journal back only
    when it is hot (no live writer holds the file's lock), so a writer mid-transaction is left alone."""
    if not Path(f"{path}-journal").exists() or not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return
    # `connect` has refused a link at `path` already, and the open that follows this one checks what it holds.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    finally:
        conn.close()


@contextmanager
def opened(path: Path, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    conn = connect(path, readonly=readonly)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE so the seq we compute cannot be taken by a concurrent writer."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _ensure(path: Path, schema: str) -> None:
    with opened(path) as conn:
        if _version(conn, path) == SCHEMA_VERSION:
            return
        conn.executescript(schema)  # new tables; each statement is idempotent on its own
        # The added columns and the version in one transaction: a kill halfway leaves a hot journal, which the
        # next open rolls back (see _roll_back_hot_journal), and the next _ensure does it again.
        with transaction(conn):
            if _version(conn, path) < SCHEMA_VERSION:
                for table, column, declaration in _ADDED_COLUMNS:
                    _add_column(conn, table, column, declaration)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{path} has schema {version}, this Clawden knows {SCHEMA_VERSION}")
    return version


def _add_column(conn: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """ALTER TABLE ADD COLUMN only changes the schema (no row is rewritten); a reader mid-query keeps its
    snapshot, and its next statement sees the column."""
    have = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
    if have and column not in have:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def ensure_inbound(folder: Path) -> Path:
    path = folder / INBOUND
    _ensure(path, _INBOUND_SCHEMA)
    return path


def ensure_outbound(folder: Path) -> Path:
    path = folder / OUTBOUND
    _ensure(path, _OUTBOUND_SCHEMA)
    with opened(path) as conn:
        conn.executescript(_ANSWERED_TABLE)
    return path


def _max_seq(conn: sqlite3.Connection, table: str) -> int:
    # Integer seqs only: a row the agent wrote by hand with text there would be the MAX (text sorts above numbers).
    query = f"SELECT COALESCE(MAX(seq), 0) FROM {table} WHERE typeof(seq) = 'integer'"
    return int(conn.execute(query).fetchone()[0])


def _next_with_parity(current: int, parity: int) -> int:
    nxt = current + 1
    return nxt if nxt % 2 == parity else nxt + 1


# --- fencing: who may write the folder ---------------------------------------------------------------------
# With `[runner] shared_storage` a session moves to another runner when its own is declared gone, and the old one
# may come back (a host cut off, a process stopped) with its container still running. The folder's `fence` row
# names the placement epoch and the runner that holds it; every write of this module checks it inside its own
# transaction, so a writer the session was moved away from writes nothing, by construction.


@dataclass(frozen=True)
class Fence:
    """A placement: the session's epoch (`ev.SessionPlaced.epoch`; 0: unknown) and the runner holding it."""

    epoch: int
    runner: str


class Fenced(RuntimeError):
    """The folder's fence names a later placement than the writer holds: the session was moved. Nothing was
    written; the writer drops the session."""

    def __init__(self, folder: Path, fence: Fence) -> None:
        super().__init__(f"session {folder.name} moved to runner {fence.runner} at epoch {fence.epoch}")
        self.folder = folder
        self.fence = fence


Claim = Literal["take", "hold", "fenced"]


def claim_decision(fence: Fence | None, epoch: int, runner: str) -> Claim:
    """What a runner's wake (or adoption) with `epoch` does to the folder's fence: take it (write the fence),
    hold it (as it is), or find it fenced. Epoch 0 (a sender that does not know it: an older router or
    scheduler) is held where no fence is or the fence names this runner."""
    if epoch == 0:
        return "hold" if fence is None or fence.runner == runner else "fenced"
    if fence is None or fence.epoch < epoch:
        return "take"
    return "hold" if fence == Fence(epoch, runner) else "fenced"


def may_write(fence: Fence | None, held: Fence) -> bool:
    """Whether a writer holding `held` may still write under `fence` (a folder with none is unfenced): only the
    runner the fence names, and, where it knows its epoch, not past a later one."""
    if fence is None:
        return True
    return fence.runner == held.runner and (held.epoch == 0 or fence.epoch <= held.epoch)


# What this process writes as: the runner (None: unfenced, as an older runner or a test), and the epoch it holds
# per session folder (0 where it knows none). The runner sets it through `claim`; the agent runner from its
# environment (`hold`).
_writer: str | None = None
_epochs: dict[str, int] = {}
# The runner itself, not one of its containers: a fence naming it at a later epoch than it holds is its own later
# claim (the session moved away and back while a poll or a pump was in flight, or runner.db kept an older epoch).
_follows_own = False
# Called (from whichever thread wrote) when a write found the folder fenced: the agent runner stops on it.
on_fenced: Callable[[Fenced], object] | None = None


def write_as(runner: str | None, *, follows_own: bool = False) -> None:
    """This process writes session folders as `runner` from now on (None: unfenced); forgets every epoch held.
    `follows_own`: the runner's own process, which, finding a fence that names it at a later epoch, holds the folder
    at that epoch and writes on. Never a container: an older container of the same runner must stop there."""
    global _writer, _follows_own
    _writer, _follows_own = runner, follows_own
    _epochs.clear()


def hold(folder: Path, epoch: int) -> None:
    """This process holds `folder` at `epoch` (what runner.db or the agent's environment says)."""
    _epochs[os.path.abspath(folder)] = epoch


def held(folder: Path) -> Fence | None:
    return None if _writer is None else Fence(_epochs.get(os.path.abspath(folder), 0), _writer)


def fence(folder: Path) -> Fence | None:
    """The folder's fence; None where there is none (an unfenced folder, or none made yet)."""
    if not (folder / INBOUND).exists():
        return None
    with opened(folder / INBOUND, readonly=True) as conn:
        return _read_fence(conn, "main")


def check_fence(folder: Path) -> None:
    """Raise Fenced if this process may no longer act for the folder (before what no transaction covers: a
    publish on the bus, a container start)."""
    if (mine := held(folder)) is not None:
        _check(folder, fence(folder), mine)


def claim(folder: Path, epoch: int, runner: str) -> Fence | None:
    """Take or hold the folder for (epoch, runner) in one write transaction, and hold it in this process;
    raises Fenced (naming the fence) when a later placement has it. Returns the fence now there. The folder's
    files are made if need be (`ensure_inbound`); the caller has checked that they are no links."""
    path = ensure_inbound(folder)
    with opened(path) as conn, transaction(conn):
        for statement in _FENCE_TABLE.split(";"):
            if statement.strip():
                conn.execute(statement)
        now = _read_fence(conn, "main")
        match claim_decision(now, epoch, runner):
            case "fenced":
                assert now is not None
                raise Fenced(folder, now)
            case "take":
                now = Fence(epoch, runner)
                conn.execute(
                    "INSERT INTO fence (id, epoch, runner, changed_at) VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE"
                    " SET epoch = excluded.epoch, runner = excluded.runner, changed_at = excluded.changed_at",
                    (epoch, runner, time.time()),
                )
    hold(folder, now.epoch if now is not None else 0)  # not fenced: a fence here names this runner
    return now


def _read_fence(conn: sqlite3.Connection, schema: str) -> Fence | None:
    made = conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'fence'").fetchone()
    row = conn.execute(f"SELECT epoch, runner FROM {schema}.fence WHERE id = 1").fetchone() if made else None
    return Fence(int(row[0]), str(row[1])) if row else None


def _check(folder: Path, now: Fence | None, mine: Fence) -> None:
    if may_write(now, mine):
        return
    assert now is not None
    if _follows_own and now.runner == mine.runner:
        hold(folder, now.epoch)
        return
    fenced = Fenced(folder, now)
    if on_fenced is not None:
        on_fenced(fenced)
    raise fenced


@contextmanager
def _writing(path: Path) -> Iterator[sqlite3.Connection]:
    """A write transaction on one of the pair that checks the fence first, inside it: the fence cannot change
    before it commits. For outbound.db, inbound.db is attached read-only; the shared lock this read takes on it is
    held to the commit, so a claim waits for the write (both sides serialise on the file locks; DELETE mode)."""
    folder = path.parent
    mine = held(folder)
    with opened(path) as conn:
        schema = "main" if path.name == INBOUND else _attach_inbound(conn, folder) if mine is not None else None
        with transaction(conn):
            if mine is not None:
                _check(folder, _read_fence(conn, schema) if schema else None, mine)
            yield conn


def _attach_inbound(conn: sqlite3.Connection, folder: Path) -> str | None:
    path = folder / INBOUND
    if not path.exists():
        return None  # no host file yet: nothing fences the folder
    _check_regular(path)
    _roll_back_hot_journal(path)
    conn.execute("ATTACH DATABASE ? AS inbound", (_uri(path, readonly=True),))
    _check_opened(conn, "inbound", path)  # the fence read through a link would be another folder's
    return "inbound"


# --- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    channel: str
    chat_id: str
    thread_id: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    id: str
    kind: str
    content: dict[str, Any]
    routing: Routing
    sender_id: str | None = None
    sender_name: str | None = None
    trigger: bool = True
    seq: int = 0
    created_at: float = field(default_factory=time.time)
    tries: int = 0


@dataclass(frozen=True)
class OutboundMessage:
    id: str
    seq: int
    kind: str
    content: dict[str, Any]
    routing: Routing
    in_reply_to: int | None
    created_at: float


@dataclass(frozen=True)
class Unreadable:
    """An outbound row that is none `write_outbound` writes (the agent can write outbound.db as it likes): its seq,
    and what is wrong with it. It is never published; the host's cursor moves past it like any other row."""

    seq: int
    why: str


# --- host side (writes inbound.db) ----------------------------------------------------------------


def insert_inbound(folder: Path, msg: InboundMessage, *, outbound_max_seq: int = 0) -> tuple[int, bool]:
    """Store an inbound message once; returns (seq, inserted). A replayed id keeps its first seq."""
    with _writing(folder / INBOUND) as conn:
        row = conn.execute("SELECT seq FROM messages_in WHERE id = ?", (msg.id,)).fetchone()
        if row is not None:
            return int(row["seq"]), False
        seq = _next_with_parity(max(_max_seq(conn, "messages_in"), outbound_max_seq), 0)
        conn.execute(
            "INSERT INTO messages_in (id, seq, kind, created_at, trigger, channel, chat_id, thread_id,"
            " sender_id, sender_name, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                msg.id,
                seq,
                msg.kind,
                msg.created_at,
                int(msg.trigger),
                msg.routing.channel,
                msg.routing.chat_id,
                msg.routing.thread_id,
                msg.sender_id,
                msg.sender_name,
                json.dumps(msg.content),
            ),
        )
        return seq, True


def set_routing(folder: Path, routing: Routing) -> None:
    with _writing(folder / INBOUND) as conn:
        conn.execute(
            "INSERT INTO session_routing (id, channel, chat_id, thread_id) VALUES (1, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET channel = excluded.channel, chat_id = excluded.chat_id,"
            " thread_id = excluded.thread_id",
            (routing.channel, routing.chat_id, routing.thread_id),
        )


@dataclass(frozen=True)
class Delivery:
    """What the platform said of one outbound message: delivered (and, if it told, read) or failed."""

    out_seq: int
    platform_message_id: str | None
    status: str  # 'delivered' or 'failed'
    error: str | None
    delivered_at: float
    read_at: float | None = None

    @property
    def state(self) -> str:
        """'failed', 'read' or 'delivered'."""
        return "read" if self.status == "delivered" and self.read_at is not None else self.status


def merge_delivery(old: Delivery | None, new: Delivery) -> Delivery:
    """The strongest word per message, whatever order receipts come in (Meta does not order its status
    webhooks): failed > read > delivered. Failed stays failed; a late "delivered" never un-reads a message;
    the first time each state was seen is kept, and a platform id once known is never lost."""
    if old is None:
        return new
    if old.status == "failed":
        return old
    known = new.platform_message_id or old.platform_message_id
    if new.status == "failed":
        return replace(new, platform_message_id=known)
    read_at = new.read_at if old.read_at is None else old.read_at
    return replace(old, platform_message_id=known, read_at=read_at)


def record_delivery(
    folder: Path, out_seq: int, *, platform_message_id: str | None, error: str | None = None, read: bool = False
) -> Delivery:
    """A receipt from the bridge, merged into what the session knows, so the agent learns whether its message
    arrived and whether the person read it. Returns the message's state now."""
    path = ensure_inbound(folder)  # a receipt can come before the session's next wake brings its file up to date
    now = time.time()
    status = "failed" if error else "delivered"
    new = Delivery(out_seq, platform_message_id, status, error, now, now if read and not error else None)
    with _writing(path) as conn:
        row = conn.execute("SELECT * FROM delivered WHERE out_seq = ?", (out_seq,)).fetchone()
        old = _delivery_from_row(row) if row else None
        merged = merge_delivery(old, new)
        if merged != old:
            conn.execute(
                "INSERT OR REPLACE INTO delivered (out_seq, platform_message_id, status, error, delivered_at,"
                " read_at) VALUES (?, ?, ?, ?, ?, ?)",
                (out_seq, merged.platform_message_id, merged.status, merged.error, merged.delivered_at, merged.read_at),
            )
    return merged


def delivery(folder: Path, out_seq: int) -> Delivery | None:
    """What the session knows of one outbound message's delivery; None before any receipt."""
    with opened(folder / INBOUND, readonly=True) as conn:
        row = conn.execute("SELECT * FROM delivered WHERE out_seq = ?", (out_seq,)).fetchone()
    return _delivery_from_row(row) if row else None


def outbound_max_seq(folder: Path) -> int:
    path = folder / OUTBOUND
    if not path.exists():
        return 0
    with opened(path, readonly=True) as conn:
        return _max_seq(conn, "messages_out")


def read_new_outbound(folder: Path) -> list[OutboundMessage]:
    """Outbound rows the host has not yet marked published, oldest first; unreadable ones left out."""
    return [row for row in outbound_to_publish(folder) if isinstance(row, OutboundMessage)]


def outbound_to_publish(folder: Path) -> list[OutboundMessage | Unreadable]:
    """Outbound rows the host has not yet marked published, oldest first, with an Unreadable in the place of each
    row the host cannot read, so that it can move its cursor past it: one bad row must not hold back every later
    reply. A row whose seq is no integer is no row at all (it has no place in the order, and could not be a cursor)."""
    path = folder / OUTBOUND
    if not path.exists():
        return []
    with opened(folder / INBOUND, readonly=True) as conn:
        row = conn.execute("SELECT published_out_seq FROM host_cursor WHERE id = 1").fetchone()
        cursor = int(row[0]) if row else 0
    with opened(path, readonly=True) as conn:
        rows = conn.execute(
            "SELECT * FROM messages_out WHERE typeof(seq) = 'integer' AND seq > ? ORDER BY seq", (cursor,)
        ).fetchall()
    return [_outbound_from_row(r) for r in rows]


def mark_published(folder: Path, out_seq: int) -> None:
    with _writing(folder / INBOUND) as conn:
        conn.execute(
            "INSERT INTO host_cursor (id, published_out_seq) VALUES (1, ?) ON CONFLICT(id) DO UPDATE"
            " SET published_out_seq = MAX(published_out_seq, excluded.published_out_seq)",
            (out_seq,),
        )


def sync_acks(folder: Path) -> dict[int, str]:
    """Copy the container's final acks into messages_in.status; returns what changed."""
    path = folder / OUTBOUND
    if not path.exists():
        return {}
    with opened(path, readonly=True) as conn:
        acks = {
            int(r["seq"]): str(r["status"])
            for r in conn.execute("SELECT seq, status FROM processing_ack WHERE status IN ('completed', 'failed')")
        }
    if not acks:
        return {}
    changed: dict[int, str] = {}
    with _writing(folder / INBOUND) as conn:
        for seq, status in acks.items():
            cur = conn.execute("UPDATE messages_in SET status = ? WHERE seq = ? AND status = 'pending'", (status, seq))
            if cur.rowcount:
                changed[seq] = status
    return changed


def has_unanswered(folder: Path) -> bool:
    """Whether the agent still owes an answer (the host syncs acks first); such a session is busy."""
    with opened(folder / INBOUND, readonly=True) as conn:
        row = conn.execute("SELECT 1 FROM messages_in WHERE status = 'pending' AND trigger = 1 LIMIT 1").fetchone()
    return row is not None


def newest_unanswered(folder: Path) -> int:
    """The seq of the newest message the agent still owes an answer to (0: none)."""
    with opened(folder / INBOUND, readonly=True) as conn:
        row = conn.execute("SELECT MAX(seq) FROM messages_in WHERE status = 'pending' AND trigger = 1").fetchone()
    return int(row[0] or 0)


def inbound_status(folder: Path) -> dict[int, str]:
    with opened(folder / INBOUND, readonly=True) as conn:
        return {int(r["seq"]): str(r["status"]) for r in conn.execute("SELECT seq, status FROM messages_in")}


def unfinished(folder: Path) -> list[InboundMessage]:
    """Triggering messages the agent has not finished (no completed/failed ack), oldest first."""
    acks: dict[int, str] = {}
    out = folder / OUTBOUND
    if out.exists():
        with opened(out, readonly=True) as conn:
            acks = {int(r["seq"]): str(r["status"]) for r in conn.execute("SELECT seq, status FROM processing_ack")}
    with opened(folder / INBOUND, readonly=True) as conn:
        rows = conn.execute("SELECT * FROM messages_in WHERE status = 'pending' AND trigger = 1 ORDER BY seq")
        return [m for m in map(_inbound_from_row, rows) if acks.get(m.seq) not in ("completed", "failed")]


def settle_unfinished(folder: Path, max_tries: int) -> tuple[list[InboundMessage], list[InboundMessage]]:
    """After a container died or hung: count a try against each unfinished message.

    Returns (to retry, failed for good); failed ones are marked so, the rest stay pending for the
    next container (which clears its predecessor's processing claims and runs them again).
    """
    retry: list[InboundMessage] = []
    failed: list[InboundMessage] = []
    todo = unfinished(folder)
    with _writing(folder / INBOUND) as conn:
        for msg in todo:
            gave_up = msg.tries + 1 >= max_tries
            conn.execute(
                "UPDATE messages_in SET tries = tries + 1, status = ? WHERE seq = ?",
                ("failed" if gave_up else "pending", msg.seq),
            )
            (failed if gave_up else retry).append(msg)
    return retry, failed


def fail_pending(folder: Path) -> list[InboundMessage]:
    """Give up on every unfinished message at once (the agent cannot be started at all)."""
    return settle_unfinished(folder, max_tries=0)[1]


# --- container side (writes outbound.db) ------------------------------------------------------------


def pending_inbound(folder: Path, *, limit: int = 10) -> list[InboundMessage]:
    """Up to `limit` pending rows the agent has not acked yet, oldest first (system rows never count)."""
    with opened(folder / OUTBOUND, readonly=True) as conn:
        done = {int(r[0]) for r in conn.execute("SELECT seq FROM processing_ack")}
    with opened(folder / INBOUND, readonly=True) as conn:
        rows = conn.execute(
            "SELECT * FROM messages_in WHERE status = 'pending' AND kind != 'system'"
            " AND (process_after IS NULL OR process_after <= ?) ORDER BY seq",
            (time.time(),),
        ).fetchall()
    fresh = [_inbound_from_row(r) for r in rows if int(r["seq"]) not in done]
    return fresh[:limit] if limit else fresh


def inbound_by_id(folder: Path, ids: Iterable[str]) -> dict[str, InboundMessage]:
    """Rows by id, whatever their state (the earlier messages that edits and deletes name)."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    with opened(folder / INBOUND, readonly=True) as conn:
        rows = conn.execute(
            f"SELECT * FROM messages_in WHERE id IN ({', '.join('?' * len(wanted))})", wanted
        ).fetchall()
    return {str(r["id"]): _inbound_from_row(r) for r in rows}


def ack(folder: Path, seqs: Iterable[int], status: str) -> None:
    now = time.time()
    with _writing(folder / OUTBOUND) as conn:
        conn.executemany(
            "INSERT INTO processing_ack (seq, status, changed_at) VALUES (?, ?, ?)"
            " ON CONFLICT(seq) DO UPDATE SET status = excluded.status, changed_at = excluded.changed_at",
            [(s, status, now) for s in seqs],
        )


def unclaim(folder: Path, seqs: Iterable[int]) -> None:
    """Give rows the agent claimed back to the pending queue, to be shown to the model (again)."""
    rows = [(s,) for s in seqs]
    with _writing(folder / OUTBOUND) as conn:
        conn.executemany("DELETE FROM processing_ack WHERE seq = ? AND status = 'processing'", rows)
        conn.executemany("DELETE FROM answered WHERE seq = ?", rows)


@dataclass(frozen=True)
class Cost:
    usd: float
    input_tokens: int
    output_tokens: int
    messages: int


def record_cost(folder: Path, seqs: list[int], *, usd: float, input_tokens: int, output_tokens: int) -> None:
    """Charge one model turn to the rows it answered, in equal shares."""
    n = len(seqs)
    now = time.time()
    with _writing(folder / OUTBOUND) as conn:
        conn.executemany(
            "INSERT INTO turn_cost (seq, usd, input_tokens, output_tokens, charged_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(seq) DO UPDATE SET usd = usd + excluded.usd, input_tokens = input_tokens +"
            " excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens",
            [
                (
                    s,
                    usd / n,
                    input_tokens // n + (i < input_tokens % n),
                    output_tokens // n + (i < output_tokens % n),
                    now,
                )
                for i, s in enumerate(seqs)
            ],
        )


def cost(folder: Path, seqs: Iterable[int] | None = None) -> Cost:
    """What the rows `seqs` (every row when None) cost in model use."""
    with opened(folder / OUTBOUND, readonly=True) as conn:
        rows = conn.execute("SELECT seq, usd, input_tokens, output_tokens FROM turn_cost").fetchall()
    wanted = None if seqs is None else set(seqs)
    picked = [r for r in rows if wanted is None or int(r[0]) in wanted]
    return Cost(
        sum(float(r[1]) for r in picked), sum(int(r[2]) for r in picked), sum(int(r[3]) for r in picked), len(picked)
    )


def charged_seqs(folder: Path) -> list[int]:
    with opened(folder / OUTBOUND, readonly=True) as conn:
        return [int(r[0]) for r in conn.execute("SELECT seq FROM turn_cost ORDER BY seq")]


def clear_processing(folder: Path) -> list[int]:
    """A fresh container settles the claims a dead predecessor left behind: one it had written to the chat for is
    done (the ledger's rule when Claude Code dies: running it again would answer it twice, or fold its answer into
    the next message's), and the rest run again. Returns the rows found done."""
    claimed = "status = 'processing' AND seq IN (SELECT seq FROM answered)"
    with _writing(folder / OUTBOUND) as conn:
        done = [int(r[0]) for r in conn.execute(f"SELECT seq FROM processing_ack WHERE {claimed} ORDER BY seq")]
        conn.execute(f"UPDATE processing_ack SET status = 'completed', changed_at = ? WHERE {claimed}", (time.time(),))
        conn.execute("DELETE FROM processing_ack WHERE status = 'processing'")
        conn.execute("DELETE FROM answered")
    return done


def session_routing(folder: Path) -> Routing | None:
    with opened(folder / INBOUND, readonly=True) as conn:
        row = conn.execute("SELECT channel, chat_id, thread_id FROM session_routing WHERE id = 1").fetchone()
    return Routing(row["channel"], row["chat_id"], row["thread_id"]) if row else None


def destinations(folder: Path) -> dict[str, Routing]:
    """Named chats this session may send to (the host's projection of the agent group's list)."""
    with opened(folder / INBOUND, readonly=True) as conn:
        rows = conn.execute("SELECT name, channel, chat_id, thread_id FROM destinations").fetchall()
    return {str(r["name"]): Routing(r["channel"], r["chat_id"], r["thread_id"]) for r in rows}


def set_destinations(folder: Path, named: dict[str, tuple[str, Routing]]) -> None:
    """Replace the projection: name -> (display name, routing)."""
    with _writing(folder / INBOUND) as conn:
        conn.execute("DELETE FROM destinations")
        conn.executemany(
            "INSERT INTO destinations (name, display_name, channel, chat_id, thread_id) VALUES (?, ?, ?, ?, ?)",
            [(name, shown, r.channel, r.chat_id, r.thread_id) for name, (shown, r) in named.items()],
        )


def platform_message_id(folder: Path, seq: int) -> str | None:
    """The platform's id of a message by seq: a delivered outbound one (odd) or an inbound one (even)."""
    with opened(folder / INBOUND, readonly=True) as conn:
        if seq % 2:
            row = conn.execute(
                "SELECT platform_message_id FROM delivered WHERE out_seq = ? AND status = 'delivered'", (seq,)
            ).fetchone()
            return str(row[0]) if row and row[0] else None
        row = conn.execute("SELECT content FROM messages_in WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        return None
    value = json.loads(row[0]).get("platform_message_id")
    return str(value) if value else None


def outbound_row_id(folder: Path, seq: int) -> str | None:
    """The id the agent gave its outbound row `seq` (its outbound event is `<session>:<id>`), or None."""
    with opened(folder / OUTBOUND, readonly=True) as conn:
        row = conn.execute("SELECT id FROM messages_out WHERE seq = ?", (seq,)).fetchone()
    return str(row[0]) if row else None


def failed_deliveries(folder: Path, after_seq: int = 0) -> list[tuple[int, str]]:
    """(outbound seq, error) of sends the platform refused for good, newest last."""
    with opened(folder / INBOUND, readonly=True) as conn:
        rows = conn.execute(
            "SELECT out_seq, error FROM delivered WHERE status = 'failed' AND out_seq > ? ORDER BY out_seq",
            (after_seq,),
        ).fetchall()
    return [(int(r[0]), str(r[1] or "")) for r in rows]


def response_id(request_id: str) -> str:
    return f"response:{request_id}"


def respond(folder: Path, request_id: str, content: dict[str, Any]) -> None:
    """The host answers an agent's request (a question, a task listing) with a system row."""
    routing = session_routing(folder) or Routing("", "")
    insert_inbound(
        folder,
        InboundMessage(id=response_id(request_id), kind="system", content=content, routing=routing, trigger=False),
        outbound_max_seq=outbound_max_seq(folder),
    )


def response(folder: Path, request_id: str) -> dict[str, Any] | None:
    with opened(folder / INBOUND, readonly=True) as conn:
        row = conn.execute("SELECT content FROM messages_in WHERE id = ?", (response_id(request_id),)).fetchone()
    return dict(json.loads(row[0])) if row else None


def unanswered_questions(folder: Path) -> list[OutboundMessage]:
    """The agent's question rows the host has not answered yet (no response row for their `request_id`), oldest
    first: what a runner that takes the session over must know was asked. Whether a card is still open is the
    caller's to judge (the row's `created_at` and its content's `timeout`)."""
    if not (folder / OUTBOUND).exists() or not (folder / INBOUND).exists():
        return []
    with opened(folder / OUTBOUND, readonly=True) as conn:
        rows = conn.execute(
            "SELECT * FROM messages_out WHERE kind = 'question' AND typeof(seq) = 'integer' ORDER BY seq"
        ).fetchall()
    asked = [m for m in map(_outbound_from_row, rows) if isinstance(m, OutboundMessage)]  # the pump logs the others
    if not asked:
        return []
    with opened(folder / INBOUND, readonly=True) as conn:
        answered = {str(r[0]) for r in conn.execute("SELECT id FROM messages_in WHERE kind = 'system'")}
    return [m for m in asked if response_id(str(m.content.get("request_id", ""))) not in answered]


def write_outbound(
    folder: Path,
    *,
    id: str,
    kind: str,
    content: dict[str, Any],
    routing: Routing,
    in_reply_to: int | None = None,
    answers: Iterable[int] = (),
) -> int:
    """Append one outbound row with the next odd seq (above every seq in both files), once: a replayed id (a turn
    run again after a crash) returns the first row's seq. `answers`: the claimed rows this one answers, recorded in
    the same transaction (see `clear_processing`)."""
    with opened(folder / INBOUND, readonly=True) as conn:
        inbound_max = _max_seq(conn, "messages_in")
    with _writing(folder / OUTBOUND) as conn:
        first = conn.execute("SELECT seq FROM messages_out WHERE id = ?", (id,)).fetchone()
        seq = int(first[0]) if first else _next_with_parity(max(inbound_max, _max_seq(conn, "messages_out")), 1)
        if first is None:
            conn.execute(
                "INSERT INTO messages_out (id, seq, in_reply_to, created_at, kind, channel, chat_id, thread_id,"
                " content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    id,
                    seq,
                    in_reply_to,
                    time.time(),
                    kind,
                    routing.channel,
                    routing.chat_id,
                    routing.thread_id,
                    json.dumps(content),
                ),
            )
        conn.executemany("INSERT OR IGNORE INTO answered (seq, out_seq) VALUES (?, ?)", [(s, seq) for s in answers])
        return seq


def written_at(folder: Path, id: str) -> float | None:
    """When the outbound row `id` was first written (a turn run again finds its first row's time), or None."""
    with opened(folder / OUTBOUND, readonly=True) as conn:
        row = conn.execute("SELECT created_at FROM messages_out WHERE id = ?", (id,)).fetchone()
    return float(row[0]) if row else None


# --- an agent's `clawden` write waiting for an admin (services/runner/admin.py) -------------------------------------
# Kept in inbound.db, the host's file, so that the runner the session moves to finds it (runner.db is the asking
# runner's alone). Only runners read it; a file made before it gets the table from its first write. The agent can
# write its folder, so a runner acts on a row only once it checks out against its approval id (`admin.write_id`).
_CLI_WRITES = "CREATE TABLE IF NOT EXISTS cli_writes (id TEXT PRIMARY KEY, argv TEXT NOT NULL, asked_at REAL NOT NULL)"


def keep_cli_write(folder: Path, request_id: str, argv: list[str]) -> None:
    """Keep a write the agent asked for in its folder (raises Fenced if the session moved)."""
    with _writing(folder / INBOUND) as conn:
        conn.execute(_CLI_WRITES)
        conn.execute("INSERT OR IGNORE INTO cli_writes VALUES (?, ?, ?)", (request_id, json.dumps(argv), time.time()))


def kept_cli_writes(folder: Path) -> list[tuple[str, list[str]]]:
    """The writes kept in the folder, oldest first: (approval id, command); anything but a list of strings is no
    command (the agent may have written the row) and is left out."""
    if not (folder / INBOUND).exists():
        return []
    with opened(folder / INBOUND, readonly=True) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cli_writes'").fetchone():
            return []
        rows = conn.execute("SELECT id, argv FROM cli_writes ORDER BY asked_at").fetchall()
    writes: list[tuple[str, list[str]]] = []
    for request_id, text in rows:
        try:
            argv = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(request_id, str) and isinstance(argv, list) and all(isinstance(a, str) for a in argv):
            writes.append((request_id, argv))
    return writes


def drop_cli_write(folder: Path, request_id: str) -> None:
    """The write is over (the agent has its outcome); raises Fenced if the session moved."""
    with _writing(folder / INBOUND) as conn:
        conn.execute(_CLI_WRITES)
        conn.execute("DELETE FROM cli_writes WHERE id = ?", (request_id,))


def get_state(folder: Path, key: str) -> str | None:
    with opened(folder / OUTBOUND, readonly=True) as conn:
        row = conn.execute("SELECT value FROM session_state WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row else None


def set_state(folder: Path, key: str, value: str | None) -> None:
    with _writing(folder / OUTBOUND) as conn:
        if value is None:
            conn.execute("DELETE FROM session_state WHERE key = ?", (key,))
        else:
            conn.execute(
                "INSERT INTO session_state (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key)"
                " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, value, time.time()),
            )


def _inbound_from_row(r: sqlite3.Row) -> InboundMessage:
    return InboundMessage(
        id=r["id"],
        kind=r["kind"],
        content=json.loads(r["content"]),
        routing=Routing(r["channel"], r["chat_id"], r["thread_id"]),
        sender_id=r["sender_id"],
        sender_name=r["sender_name"],
        trigger=bool(r["trigger"]),
        seq=int(r["seq"]),
        created_at=float(r["created_at"]),
        tries=int(r["tries"]),
    )


def _delivery_from_row(r: sqlite3.Row) -> Delivery:
    return Delivery(
        out_seq=int(r["out_seq"]),
        platform_message_id=r["platform_message_id"],
        status=str(r["status"]),
        error=r["error"],
        delivered_at=float(r["delivered_at"]),
        read_at=None if r["read_at"] is None else float(r["read_at"]),
    )


def _outbound_from_row(r: sqlite3.Row) -> OutboundMessage | Unreadable:
    """The row as `write_outbound` writes it, or Unreadable saying what is not: SQLite keeps whatever a column is given
    where it cannot convert it (text in created_at), and CHECK constraints hold only seq's parity and the kind."""
    seq = int(r["seq"])  # the queries take integer seqs only
    try:
        content = json.loads(r["content"])
    except (TypeError, ValueError) as exc:
        return Unreadable(seq, f"its content is no JSON ({exc})")
    texts = (r["id"], r["kind"], r["channel"], r["chat_id"], "" if r["thread_id"] is None else r["thread_id"])
    problems = (
        ("its content is no JSON object", isinstance(content, dict)),
        ("its created_at is no number", isinstance(r["created_at"], int | float)),
        ("its in_reply_to is no integer", r["in_reply_to"] is None or isinstance(r["in_reply_to"], int)),
        ("its id, kind or chat is no text", all(isinstance(t, str) for t in texts)),
    )
    if why := next((why for why, sound in problems if not sound), ""):
        return Unreadable(seq, why)
    return OutboundMessage(
        id=r["id"],
        seq=seq,
        kind=r["kind"],
        content=content,
        routing=Routing(r["channel"], r["chat_id"], r["thread_id"]),
        in_reply_to=r["in_reply_to"],
        created_at=float(r["created_at"]),
    )
