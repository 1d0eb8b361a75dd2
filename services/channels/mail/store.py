"""What the email bridge keeps beyond the shared bridge state (`data/channels/email-threads.db`): each
thread's subject, people and message ids, which sent mail carried which card, and the ids already handled."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiosqlite

from services.channels.mail.core import Thread, normal_subject

SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    chat_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    normal_subject TEXT NOT NULL,
    recipients TEXT NOT NULL,   -- JSON list: who an answer goes to
    refs TEXT NOT NULL,         -- JSON list of Message-IDs, oldest first
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_by_subject ON threads (normal_subject, updated_at);
-- Every Message-ID seen in a thread, in or out: a reply names any of them.
CREATE TABLE IF NOT EXISTS ids (
    message_id TEXT PRIMARY KEY,
    chat_id TEXT NOT NULL,
    at REAL NOT NULL
);
-- A sent mail that carried a card: a reply with a number presses that button.
CREATE TABLE IF NOT EXISTS cards (
    message_id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    buttons INTEGER NOT NULL,
    at REAL NOT NULL
);
-- Received mail already published: a mailbox re-numbered (UIDVALIDITY changed) is read again without repeats.
CREATE TABLE IF NOT EXISTS handled (
    key TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""
KEEP = 90 * 24 * 3600.0
SUBJECT_MATCH = 30 * 24 * 3600.0  # a mail without thread headers joins a thread this recent with its subject


class MailStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> MailStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def chat_of_ids(self, ids: list[str]) -> str | None:
        for msgid in ids:
            cur = await self.db.execute("SELECT chat_id FROM ids WHERE message_id = ?", (msgid,))
            row = await cur.fetchone()
            if row:
                return str(row[0])
        return None

    async def chat_by_subject(self, subject: str, sender: str) -> str | None:
        cur = await self.db.execute(
            "SELECT chat_id, recipients FROM threads WHERE normal_subject = ? AND updated_at > ?"
            " ORDER BY updated_at DESC",
            (normal_subject(subject), time.time() - SUBJECT_MATCH),
        )
        async for chat_id, recipients in cur:
            if sender in json.loads(recipients):
                return str(chat_id)
        return None

    async def thread(self, chat_id: str) -> Thread | None:
        cur = await self.db.execute("SELECT subject, recipients, refs FROM threads WHERE chat_id = ?", (chat_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        return Thread(chat_id, str(row[0]), tuple(json.loads(row[1])), tuple(json.loads(row[2])))

    async def save(self, thread: Thread, *new_ids: str) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT OR REPLACE INTO threads VALUES (?, ?, ?, ?, ?, ?)",
            (
                thread.chat_id,
                thread.subject,
                normal_subject(thread.subject),
                json.dumps(list(thread.to)),
                json.dumps(list(thread.references)),
                now,
            ),
        )
        for msgid in (*thread.references[:1], *new_ids):
            await self.db.execute("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)", (msgid, thread.chat_id, now))
        await self.db.commit()

    async def remember_card(self, message_id: str, token: str, buttons: int) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO cards VALUES (?, ?, ?, ?)", (message_id, token, buttons, time.time())
        )
        await self.db.commit()

    async def card(self, message_ids: list[str]) -> tuple[str, int] | None:
        for msgid in message_ids:
            cur = await self.db.execute("SELECT token, buttons FROM cards WHERE message_id = ?", (msgid,))
            row = await cur.fetchone()
            if row:
                return str(row[0]), int(row[1])
        return None

    async def handled(self, key: str) -> bool:
        cur = await self.db.execute("SELECT 1 FROM handled WHERE key = ?", (key,))
        return await cur.fetchone() is not None

    async def mark_handled(self, key: str) -> None:
        await self.db.execute("INSERT OR IGNORE INTO handled VALUES (?, ?)", (key, time.time()))
        await self.db.commit()

    async def prune(self) -> None:
        before = time.time() - KEEP
        for table, column in (("threads", "updated_at"), ("ids", "at"), ("cards", "at"), ("handled", "at")):
            await self.db.execute(f"DELETE FROM {table} WHERE {column} < ?", (before,))
        await self.db.commit()
