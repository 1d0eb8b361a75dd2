"""`router.db`: agent groups, wirings, sessions and dropped messages. Owned by the router alone."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import aiosqlite

from services.router.engage import Wiring

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_skeleton", """
        CREATE TABLE agent_groups (
            name TEXT PRIMARY KEY,
            folder TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE wirings (
            agent_group TEXT NOT NULL REFERENCES agent_groups(name),
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            PRIMARY KEY (agent_group, channel, chat_id)
        );
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            agent_group TEXT NOT NULL REFERENCES agent_groups(name),
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            thread_id TEXT NOT NULL DEFAULT '',
            runner TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_message_at REAL NOT NULL,
            UNIQUE (agent_group, channel, chat_id, thread_id)
        );
        CREATE TABLE dropped_messages (
            key TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            sender_id TEXT NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        );
    """),
]


class RouterStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> RouterStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.execute("PRAGMA foreign_keys = ON")
        store = cls(db)
        await store.migrate()
        return store

    async def close(self) -> None:
        await self.db.close()

    async def migrate(self) -> None:
        await self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, at REAL)")
        done = {row[0] async for row in await self.db.execute("SELECT name FROM migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            await self.db.executescript(
                f"BEGIN; {sql}; INSERT INTO migrations VALUES ('{name}', {time.time()}); COMMIT;")

    async def ensure_default_group(self, name: str, folder: str, channel: str, chat_id: str) -> bool:
        """Seed the first agent group and wire it, only on an empty install."""
        row = await (await self.db.execute("SELECT COUNT(*) FROM agent_groups")).fetchone()
        if row and row[0]:
            return False
        await self.db.execute("INSERT INTO agent_groups VALUES (?, ?, ?)", (name, folder, time.time()))
        await self.db.execute("INSERT INTO wirings VALUES (?, ?, ?)", (name, channel, chat_id))
        await self.db.commit()
        return True

    async def wirings(self, channel: str) -> list[Wiring]:
        cur = await self.db.execute(
            "SELECT agent_group, channel, chat_id FROM wirings WHERE channel = ?", (channel,))
        return [Wiring(*row) async for row in cur]

    async def session_for(self, agent_group: str, channel: str, chat_id: str, thread_id: str | None,
                          runner: str) -> str:
        """One session per agent group and chat (and thread); created on first contact."""
        now = time.time()
        key = (agent_group, channel, chat_id, thread_id or "")
        await self.db.execute(
            "INSERT INTO sessions (id, agent_group, channel, chat_id, thread_id, runner, created_at,"
            " last_message_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (agent_group, channel, chat_id, thread_id) DO UPDATE SET last_message_at = ?",
            (f"s-{uuid.uuid4().hex[:16]}", *key, runner, now, now, now),
        )
        await self.db.commit()
        cur = await self.db.execute(
            "SELECT id FROM sessions WHERE agent_group = ? AND channel = ? AND chat_id = ? AND thread_id = ?",
            key)
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def session_runner(self, session_id: str) -> str | None:
        cur = await self.db.execute("SELECT runner FROM sessions WHERE id = ?", (session_id,))
        row = await cur.fetchone()
        return str(row[0]) if row else None

    async def record_drop(self, key: str, channel: str, chat_id: str, sender_id: str, reason: str) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO dropped_messages VALUES (?, ?, ?, ?, ?, ?)",
            (key, channel, chat_id, sender_id, reason, time.time()))
        await self.db.commit()
