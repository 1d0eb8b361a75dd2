"""`web.db`, the web service's own: one-time links and sessions (digests only), and each web chat's
messages, so a page (re)loaded or a stream resumed after a restart shows every reply once."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from clawden.bus import events as ev
from clawden.servicedb import Store
from services.web import auth

MIGRATIONS = [
    (
        "0001_web",
        """
        CREATE TABLE links (digest TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_at REAL NOT NULL,
                            expires_at REAL NOT NULL, used_at REAL);
        CREATE TABLE sessions (digest TEXT PRIMARY KEY, user_id TEXT NOT NULL, csrf TEXT NOT NULL,
                               created_at REAL NOT NULL, expires_at REAL NOT NULL);
        CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, chat_id TEXT NOT NULL,
                               id TEXT NOT NULL UNIQUE, direction TEXT NOT NULL, sender TEXT NOT NULL,
                               text TEXT NOT NULL, card TEXT, card_id TEXT NOT NULL DEFAULT '',
                               at REAL NOT NULL, changed INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX messages_chat ON messages (chat_id, seq);
        """,
    ),
    (
        "0002_files",
        """
        ALTER TABLE messages ADD COLUMN files TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE messages ADD COLUMN paths TEXT NOT NULL DEFAULT '[]';
        CREATE TABLE uploads (id TEXT PRIMARY KEY, chat_id TEXT NOT NULL, user_id TEXT NOT NULL,
                              name TEXT NOT NULL, mime TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL,
                              at REAL NOT NULL, message_id TEXT);
        """,
    ),
]
_card = msgspec.json.Decoder(ev.Card)


@dataclass(frozen=True)
class Session:
    user_id: str
    csrf: str
    expires_at: float


@dataclass(frozen=True)
class Shown:
    """One message of a web chat as the page shows it; `version` grows with each edit, for the stream."""

    seq: int
    version: int
    chat_id: str
    id: str
    direction: str  # "in": the person's; "out": the agent's or Clawden's
    sender: str
    text: str
    card: ev.Card | None
    card_id: str  # what a press names: the id of the outbound event that carried the card as shown
    at: float
    files: tuple[str, ...] = ()  # the names of its files (the agent's are downloads; the paths stay here)

    def as_json(self) -> dict[str, Any]:
        card = msgspec.to_builtins(self.card) if self.card is not None else None
        return {k: v for k, v in vars(self).items() if k not in ("card", "files")} | {
            "card": card,
            "files": list(self.files),
        }


@dataclass(frozen=True)
class Upload:
    """A file a person uploaded into a chat, kept under the channel's files folder until a message takes it."""

    id: str
    chat_id: str
    user_id: str
    name: str
    mime: str
    size: int
    path: str

    def attachment(self) -> ev.Attachment:
        return ev.Attachment(name=self.name, mime=self.mime, size=self.size, url=Path(self.path).as_uri())


def _shown(row: sqlite3.Row) -> Shown:
    return Shown(
        seq=row["seq"],
        version=row["changed"],
        chat_id=row["chat_id"],
        id=row["id"],
        direction=row["direction"],
        sender=row["sender"],
        text=row["text"],
        card=_card.decode(row["card"]) if row["card"] else None,
        card_id=row["card_id"],
        at=row["at"],
        files=tuple(json.loads(row["files"])),
    )


@dataclass(frozen=True)
class Row:
    """A message as it is written to the messages table."""

    chat: str
    mid: str
    direction: str
    sender: str
    text: str
    card: ev.Card | None
    files: tuple[str, ...]
    paths: tuple[str, ...]


class WebStore(Store):
    migrations = MIGRATIONS

    # --- who gets in ----------------------------------------------------------------------------------

    def add_link(self, token: str, user_id: str, now: float, lasts: float) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM links WHERE expires_at < ?", (now - 86400,))
            db.execute(
                "INSERT INTO links (digest, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (auth.digest(token), user_id, now, now + lasts),
            )

    def check_link(self, token: str, now: float) -> auth.LinkState:
        row = self.conn.execute("SELECT * FROM links WHERE digest = ?", (auth.digest(token),)).fetchone()
        return auth.link_state(auth.Link(row["expires_at"], row["used_at"]) if row else None, now)

    def use_link(self, token: str, session_id: str, csrf: str, now: float, lasts: float) -> auth.LinkState | Session:
        """Spend the link and open a session in one transaction: two tabs racing with one link get one session."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM links WHERE digest = ?", (auth.digest(token),)).fetchone()
            state = auth.link_state(auth.Link(row["expires_at"], row["used_at"]) if row else None, now)
            if state != "ok":
                return state
            db.execute("UPDATE links SET used_at = ? WHERE digest = ?", (now, auth.digest(token)))
            db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            db.execute(
                "INSERT INTO sessions (digest, user_id, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (auth.digest(session_id), row["user_id"], csrf, now, now + lasts),
            )
            return Session(row["user_id"], csrf, now + lasts)

    def session(self, session_id: str, now: float) -> Session | None:
        row = self.conn.execute(
            "SELECT * FROM sessions WHERE digest = ? AND expires_at > ?", (auth.digest(session_id), now)
        ).fetchone()
        return Session(row["user_id"], row["csrf"], row["expires_at"]) if row else None

    def end_session(self, session_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE digest = ?", (auth.digest(session_id),))

    # --- the chats ------------------------------------------------------------------------------------

    def said(
        self, chat_id: str, message_id: str, sender: str, text: str, now: float, uploads: tuple[Upload, ...] = ()
    ) -> Shown | None:
        """The person's message, kept before it is published; None when this id was kept before (a resend)."""
        names = tuple(u.name for u in uploads)
        return self._insert(Row(chat_id, message_id, "in", sender, text, None, names, ()), now)

    def answered(self, event: ev.OutboundMessage, now: float) -> Shown | None:
        """An outbound message, kept before it is acknowledged; None for a redelivery already kept. The paths of
        its files are kept too: they are all a download may serve."""
        who = event.agent_group if event.kind == "reply" and event.agent_group else "clawden"
        names = tuple(Path(f.removeprefix("file://")).name for f in event.files)
        row = Row(event.route.chat_id, event.id, "out", who, event.text, event.card, names, event.files)
        return self._insert(row, now)

    def _insert(self, row: Row, now: float) -> Shown | None:
        card = msgspec.json.encode(row.card).decode() if row.card is not None else None
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO messages (chat_id, id, direction, sender, text, card, card_id, at, files, paths)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.chat,
                    row.mid,
                    row.direction,
                    row.sender,
                    row.text,
                    card,
                    row.mid if card is not None else "",
                    now,
                    json.dumps(list(row.files)),
                    json.dumps(list(row.paths)),
                ),
            )
            if not cur.rowcount:
                return None
            return _shown(db.execute("SELECT * FROM messages WHERE id = ?", (row.mid,)).fetchone())

    def sent_file(self, chat_id: str, message_id: str, index: int) -> str | None:
        """The path of the `index`th file the agent sent in `message_id` of `chat_id`, as its event named it."""
        row = self.conn.execute(
            "SELECT paths FROM messages WHERE id = ? AND chat_id = ? AND direction = 'out'", (message_id, chat_id)
        ).fetchone()
        paths: list[str] = json.loads(row["paths"]) if row else []
        return paths[index] if 0 <= index < len(paths) else None

    # --- uploads --------------------------------------------------------------------------------------

    def uploaded(self, upload: Upload, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO uploads (id, chat_id, user_id, name, mime, size, path, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (upload.id, upload.chat_id, upload.user_id, upload.name, upload.mime, upload.size, upload.path, now),
            )

    def prune_uploads(self, before: float) -> list[str]:
        """Forget the uploads made before `before` (the runner copied each one a message took into its session
        inbox; one never sent waited long enough); returns their paths, for the caller to delete."""
        with self._tx() as db:
            paths = [r["path"] for r in db.execute("SELECT path FROM uploads WHERE at < ?", (before,))]
            db.execute("DELETE FROM uploads WHERE at < ?", (before,))
            return paths

    def take_uploads(self, ids: list[str], chat_id: str, user_id: str, message_id: str) -> tuple[Upload, ...] | str:
        """The uploads a message names, taken by it: each must be this person's, in this chat, and not taken by
        another message (a resend of the same message takes them again). Else the id that is not, untouched."""
        with self._tx() as db:
            found = []
            for upload_id in ids:
                row = db.execute(
                    "SELECT * FROM uploads WHERE id = ? AND chat_id = ? AND user_id = ?"
                    " AND (message_id IS NULL OR message_id = ?)",
                    (upload_id, chat_id, user_id, message_id),
                ).fetchone()
                if row is None:
                    return upload_id
                found.append(Upload(*(row[k] for k in ("id", "chat_id", "user_id", "name", "mime", "size", "path"))))
            db.executemany("UPDATE uploads SET message_id = ? WHERE id = ?", ((message_id, u.id) for u in found))
            return tuple(found)

    def edited(self, event: ev.OutboundEdit) -> Shown | None:
        """An edit of one of our messages (its id is the outbound id we gave in the receipt): only one the agent
        or Clawden sent, in the edit's own chat. What the person said is theirs, and a message of another chat is
        never shown in this one: None, and nothing changed."""
        card = msgspec.json.encode(event.card).decode() if event.card is not None else None
        mine = (event.target_message_id, event.route.chat_id)
        with self._tx() as db:
            cur = db.execute(
                "UPDATE messages SET text = ?, card = ?, card_id = ?, changed = changed + 1"
                " WHERE id = ? AND chat_id = ? AND direction = 'out'",
                (event.text, card, event.id if card else "", *mine),
            )
            if not cur.rowcount:
                return None
            return _shown(db.execute("SELECT * FROM messages WHERE id = ? AND chat_id = ?", mine).fetchone())

    def history(self, chat_id: str, limit: int = 200) -> list[Shown]:
        rows = self.conn.execute(
            "SELECT * FROM messages WHERE chat_id = ? ORDER BY seq DESC LIMIT ?", (chat_id, limit)
        ).fetchall()
        return [_shown(r) for r in reversed(rows)]

    def reply(self, chat_id: str, message_id: str) -> Shown | None:
        """One the agent or Clawden sent in this chat, as kept (for a redelivery, which `answered` does not keep
        again)."""
        row = self.conn.execute(
            "SELECT * FROM messages WHERE id = ? AND chat_id = ? AND direction = 'out'", (message_id, chat_id)
        ).fetchone()
        return _shown(row) if row else None

    def message(self, message_id: str) -> Shown | None:
        row = self.conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _shown(row) if row else None


def dumps(shown: Shown) -> str:
    return json.dumps(shown.as_json())
