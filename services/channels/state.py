"""A bridge's own state (`data/channels/<name>.db`): its platform cursor, its sent-log, its card buttons and the
inbound events queued behind a file."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite

from clawden import servicedb

SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
-- One row per part of an outbound message. 'sending' is written before the platform call and
-- replaced once it answers, so a row still 'sending' after a crash marks a send whose outcome
-- nobody knows.
CREATE TABLE IF NOT EXISTS sends (
    outbound_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'failed', 'unconfirmed')),
    platform_id TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    PRIMARY KEY (outbound_id, part)
);
-- Short button data (platforms cap it: Telegram at 64 bytes) -> the card and button it stands for.
CREATE TABLE IF NOT EXISTS cards (
    token TEXT PRIMARY KEY,
    card_id TEXT NOT NULL,
    buttons TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
# Named migrations (clawden.servicedb), applied once each; the first is the schema files made before
# there were migrations already have, so it changes nothing there.
MIGRATIONS: list[tuple[str, str]] = [
    ("0001_bridge_state", SCHEMA),
    # What each part of a message is, so an edit of a split message changes its text parts, never its files:
    # '' for a part logged before this was kept (its edits aim at the one message they name).
    (
        "0002_send_kinds",
        """
        ALTER TABLE sends ADD COLUMN kind TEXT NOT NULL DEFAULT '' CHECK (kind IN ('', 'text', 'file'));
        CREATE INDEX sends_by_platform_id ON sends (platform_id) WHERE platform_id != '';
    """,
    ),
    # Who this instance of the bridge is in the shared sent-log (clawden/bus/sentlog.py): made once, kept
    # across restarts, so a claim it made and never acted on (a crash before the platform call) is its own.
    ("0003_instance", "CREATE TABLE instance (id TEXT NOT NULL)"),
    # A part an edit took away keeps its platform id, so a later edit aimed at it (the receipt named the last
    # part) still finds its message; the edit then leaves the part be. And when a part was first tried: a
    # platform that drops repeats of one key does so only for a while after the send.
    (
        "0004_removed_and_tried",
        """
        ALTER TABLE sends ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE sends ADD COLUMN tried_at REAL NOT NULL DEFAULT 0;
    """,
    ),
    # Inbound events queued behind a file the platform could not hand over yet (a 5xx, a connection cut), and
    # the same chat's later events behind them, so the chat's order holds: published in `seq` order once the
    # file is fetched, refused for good, or waited for long enough. Kept here, so the listener may move the
    # platform's cursor past them and a restart goes on where this one stopped.
    (
        "0005_queued_inbound",
        """
        CREATE TABLE queued (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            chat TEXT NOT NULL,
            event BLOB NOT NULL,  -- as it will be published: fetched files with file:// urls, the rest the platform's
            notes TEXT NOT NULL DEFAULT '[]',  -- why each file no longer pending was not fetched (a JSON list)
            since REAL NOT NULL DEFAULT 0,  -- when it began to wait: the patience counts from then
            why TEXT NOT NULL DEFAULT ''  -- the last failure
        );
        CREATE INDEX queued_by_chat ON queued (chat, seq);
    """,
    ),
]

SendState = Literal["sending", "sent", "failed", "unconfirmed"]
PartKind = Literal["", "text", "file"]
# The sent-log must outlive any redelivery of an outbound event: the stream keeps them 7 days.
SENDS_KEPT = 8 * 24 * 3600.0
CARDS_KEPT = 31 * 24 * 3600.0  # approvals may be clicked for as long as their stream keeps them


@dataclass(frozen=True)
class Send:
    part: int
    state: SendState
    platform_id: str
    error: str
    kind: PartKind = ""
    removed: bool = False  # an edit took it away (or emptied it)
    tried_at: float = 0.0  # when it was first marked 'sending' (0: never, or logged before this was kept)


@dataclass(frozen=True)
class Queued:
    """An inbound event queued behind a file (see the `queued` table); `event` as `clawden.bus.events` encodes it."""

    event: bytes
    notes: list[str]  # from an earlier version: why files were not fetched (now each attachment's `error`)
    since: float = 0.0
    why: str = ""
    seq: int = 0  # its place in the queue (0 until stored)


class BridgeState:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> BridgeState:
        await asyncio.to_thread(_migrate, path)
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode = WAL")
        # FULL: a 'sent' row must survive a power cut too, or the message would go out again.
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA busy_timeout = 5000")
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def instance_id(self) -> str:
        """This instance's name in the shared sent-log: made at its first start, the same ever after."""
        # One statement, so lanes asking at once on a new file still agree on one id.
        made = uuid.uuid4().hex
        await self.db.execute("INSERT INTO instance SELECT ? WHERE NOT EXISTS (SELECT 1 FROM instance)", (made,))
        await self.db.commit()
        cur = await self.db.execute("SELECT id FROM instance")
        row = await cur.fetchone()
        return str(row[0]) if row is not None else made

    # --- cursor --------------------------------------------------------------------------------

    async def cursor(self, name: str) -> tuple[str, float] | None:
        cur = await self.db.execute("SELECT value, updated_at FROM cursor WHERE name = ?", (name,))
        row = await cur.fetchone()
        return (str(row[0]), float(row[1])) if row else None

    async def set_cursor(self, name: str, value: str) -> None:
        await self.db.execute("INSERT OR REPLACE INTO cursor VALUES (?, ?, ?)", (name, value, time.time()))
        await self.db.commit()

    async def forget_cursors(self, prefix: str, before: float) -> int:
        """Drop the cursors named `<prefix>…` last set before `before` (a bridge's per-message or per-person
        records, kept as cursors); how many went."""
        cur = await self.db.execute(
            "DELETE FROM cursor WHERE substr(name, 1, ?) = ? AND updated_at < ?", (len(prefix), prefix, before)
        )
        await self.db.commit()
        return int(cur.rowcount or 0)

    # --- sent-log ------------------------------------------------------------------------------

    async def sends(self, outbound_id: str) -> dict[int, Send]:
        cur = await self.db.execute(
            "SELECT part, state, platform_id, error, kind, removed, tried_at FROM sends WHERE outbound_id = ?",
            (outbound_id,),
        )
        return {
            int(r[0]): Send(int(r[0]), r[1], str(r[2]), str(r[3]), r[4], bool(r[5]), float(r[6])) async for r in cur
        }

    async def message_of(self, platform_id: str) -> tuple[str, dict[int, Send]] | None:
        """The outbound message one of whose parts the platform knows as `platform_id`, with every part."""
        cur = await self.db.execute("SELECT outbound_id FROM sends WHERE platform_id = ? LIMIT 1", (platform_id,))
        row = await cur.fetchone()
        return (str(row[0]), await self.sends(str(row[0]))) if row else None

    async def mark(
        self, outbound_id: str, part: int, state: SendState, platform_id: str = "", error: str = "", kind: PartKind = ""
    ) -> None:
        """`kind` "" keeps what the row says already; the first 'sending' sets when the part was first tried."""
        now = time.time()
        await self.db.execute(
            "INSERT INTO sends (outbound_id, part, state, platform_id, error, updated_at, kind, tried_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (outbound_id, part) DO UPDATE SET state = excluded.state,"
            " platform_id = excluded.platform_id, error = excluded.error, updated_at = excluded.updated_at,"
            " kind = iif(excluded.kind = '', kind, excluded.kind),"
            " tried_at = iif(tried_at = 0, excluded.tried_at, tried_at)",
            (outbound_id, part, state, platform_id, error, now, kind, now if state == "sending" else 0.0),
        )
        await self.db.commit()

    async def removed(self, platform_id: str) -> None:
        """An edit took this part away (or emptied it): later edits of its message leave it be, and still find the
        message by it."""
        await self.db.execute(
            "UPDATE sends SET removed = 1, updated_at = ? WHERE platform_id = ?", (time.time(), platform_id)
        )
        await self.db.commit()

    async def unmark(self, outbound_id: str, part: int) -> None:
        """The platform said no for certain: the part was not sent, and may be tried again."""
        await self.db.execute("DELETE FROM sends WHERE outbound_id = ? AND part = ?", (outbound_id, part))
        await self.db.commit()

    # --- inbound events queued behind a file -----------------------------------------------------

    async def queue(self, chat: str, queued: Queued) -> None:
        await self.db.execute(
            "INSERT INTO queued (chat, event, notes, since, why) VALUES (?, ?, ?, ?, ?)",
            (chat, queued.event, json.dumps(queued.notes), queued.since, queued.why),
        )
        await self.db.commit()

    async def queued_chats(self) -> list[str]:
        cur = await self.db.execute("SELECT DISTINCT chat FROM queued")
        return [str(row[0]) async for row in cur]

    async def first_queued(self, chat: str) -> Queued | None:
        cur = await self.db.execute(
            "SELECT seq, event, notes, since, why FROM queued WHERE chat = ? ORDER BY seq LIMIT 1", (chat,)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return Queued(bytes(row[1]), [str(n) for n in json.loads(row[2])], float(row[3]), str(row[4]), int(row[0]))

    async def requeue(self, queued: Queued) -> None:
        """Keep what a try fetched (and why the rest was not), so a restart does not fetch it again."""
        await self.db.execute(
            "UPDATE queued SET event = ?, notes = ?, since = ?, why = ? WHERE seq = ?",
            (queued.event, json.dumps(queued.notes), queued.since, queued.why, queued.seq),
        )
        await self.db.commit()

    async def dequeue(self, seq: int) -> None:
        await self.db.execute("DELETE FROM queued WHERE seq = ?", (seq,))
        await self.db.commit()

    # --- card buttons --------------------------------------------------------------------------

    async def remember_card(self, token: str, card_id: str, button_ids: list[str]) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO cards VALUES (?, ?, ?, ?)", (token, card_id, json.dumps(button_ids), time.time())
        )
        await self.db.commit()

    async def card(self, token: str) -> tuple[str, list[str]] | None:
        cur = await self.db.execute("SELECT card_id, buttons FROM cards WHERE token = ?", (token,))
        row = await cur.fetchone()
        return (str(row[0]), [str(b) for b in json.loads(row[1])]) if row else None

    # --- housekeeping --------------------------------------------------------------------------

    async def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        await self.db.execute("DELETE FROM sends WHERE updated_at < ?", (now - SENDS_KEPT,))
        await self.db.execute("DELETE FROM cards WHERE created_at < ?", (now - CARDS_KEPT,))
        await self.db.commit()


def _migrate(path: Path) -> None:
    conn, _applied = servicedb.open_db(path, MIGRATIONS)
    conn.close()
