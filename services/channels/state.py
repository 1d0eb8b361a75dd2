"""A bridge's own state (`data/channels/<name>.db`): its platform cursor, its sent-log and its card buttons."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiosqlite

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

SendState = Literal["sending", "sent", "failed", "unconfirmed"]
# The sent-log must outlive any redelivery of an outbound event: the stream keeps them 7 days.
SENDS_KEPT = 8 * 24 * 3600.0
CARDS_KEPT = 31 * 24 * 3600.0  # approvals may be clicked for as long as their stream keeps them


@dataclass(frozen=True)
class Send:
    part: int
    state: SendState
    platform_id: str
    error: str


class BridgeState:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> BridgeState:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode = WAL")
        # FULL: a 'sent' row must survive a power cut too, or the message would go out again.
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    # --- cursor --------------------------------------------------------------------------------

    async def cursor(self, name: str) -> tuple[str, float] | None:
        cur = await self.db.execute("SELECT value, updated_at FROM cursor WHERE name = ?", (name,))
        row = await cur.fetchone()
        return (str(row[0]), float(row[1])) if row else None

    async def set_cursor(self, name: str, value: str) -> None:
        await self.db.execute("INSERT OR REPLACE INTO cursor VALUES (?, ?, ?)", (name, value, time.time()))
        await self.db.commit()

    # --- sent-log ------------------------------------------------------------------------------

    async def sends(self, outbound_id: str) -> dict[int, Send]:
        cur = await self.db.execute(
            "SELECT part, state, platform_id, error FROM sends WHERE outbound_id = ?", (outbound_id,))
        return {int(r[0]): Send(int(r[0]), r[1], str(r[2]), str(r[3])) async for r in cur}

    async def mark(self, outbound_id: str, part: int, state: SendState, platform_id: str = "",
                   error: str = "") -> None:
        await self.db.execute("INSERT OR REPLACE INTO sends VALUES (?, ?, ?, ?, ?, ?)",
                              (outbound_id, part, state, platform_id, error, time.time()))
        await self.db.commit()

    async def unmark(self, outbound_id: str, part: int) -> None:
        """The platform said no for certain: the part was not sent, and may be tried again."""
        await self.db.execute("DELETE FROM sends WHERE outbound_id = ? AND part = ?", (outbound_id, part))
        await self.db.commit()

    # --- card buttons --------------------------------------------------------------------------

    async def remember_card(self, token: str, card_id: str, button_ids: list[str]) -> None:
        await self.db.execute("INSERT OR IGNORE INTO cards VALUES (?, ?, ?, ?)",
                              (token, card_id, json.dumps(button_ids), time.time()))
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
