"""Session folders on the host side: layout, ownership, the runner's own record of each session, doorbells."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from clawden import safefs, servicedb, sessiondb, unixsock
from clawden.bus import events as ev

log = logging.getLogger("clawden.runner.sessions")


@dataclass(frozen=True)
class SessionInfo:
    id: str
    agent_group: str
    route: ev.Route


MIGRATIONS = [
    (
        "0001_runner",
        """
        CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, agent_group TEXT NOT NULL,
            channel TEXT NOT NULL, chat_id TEXT NOT NULL, thread_id TEXT, updated_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS questions (id TEXT PRIMARY KEY, session_id TEXT NOT NULL,
            options TEXT NOT NULL, asked_at REAL NOT NULL);
        CREATE TABLE IF NOT EXISTS destinations (session_id TEXT NOT NULL, channel TEXT NOT NULL,
            chat_id TEXT NOT NULL, thread_id TEXT, PRIMARY KEY (session_id, channel, chat_id));
    """,
    ),
    # Each agent group's settings as the router last sent them (msgspec JSON of ev.GroupSettings), so a wake
    # that carries none (an older scheduler's) and a restarted runner start containers the same way.
    (
        "0002_group_settings",
        """
        CREATE TABLE group_settings (agent_group TEXT PRIMARY KEY, settings TEXT NOT NULL,
            changed_at REAL NOT NULL, updated_at REAL NOT NULL);
    """,
    ),
    # An agent's `clawden` write waiting for an admin (services/runner/admin.py): the command as it typed it.
    (
        "0003_cli_writes",
        """
        CREATE TABLE cli_writes (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, argv TEXT NOT NULL,
            asked_at REAL NOT NULL);
    """,
    ),
    (
        "0004_cli_writes_decided",
        # The admin's decision, once there is one: the write is being done, and is done again after a crash
        # until its outcome has reached the agent (then the row goes).
        "ALTER TABLE cli_writes ADD COLUMN decision TEXT;",
    ),
    # The session's placement epoch this runner holds its folder at (`sessiondb.claim`; 0: none known), so a
    # restarted runner still writes it only while the folder's fence names no later placement.
    ("0005_session_epoch", "ALTER TABLE sessions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;"),
    # Each group's starter CLAUDE.md (by digest) this host's group folder has had, written here or found there: it
    # is written once, so a CLAUDE.md the owner deletes later stays deleted.
    (
        "0006_starters",
        "CREATE TABLE starters (agent_group TEXT NOT NULL, digest TEXT NOT NULL, at REAL NOT NULL,"
        " PRIMARY KEY (agent_group, digest));",
    ),
]
_settings_decoder = msgspec.json.Decoder(ev.GroupSettings)
_decision_decoder = msgspec.json.Decoder(ev.ApprovalDecision)


class SessionIndex(servicedb.Store):
    """`runner.db`: which group and chat each session belongs to. Kept outside the session folder,
    which the agent can write, so an agent cannot redirect its replies or remount another group."""

    migrations = MIGRATIONS

    def __init__(self, conn: sqlite3.Connection) -> None:
        # Sessions and group settings are read from these copies on the event loop; whatever touches the
        # file is a step the runner runs on the store's own thread (`SessionIndex.start`, `run`).
        super().__init__(conn)
        self._cache: dict[str, SessionInfo] = {}
        self._epochs: dict[str, int] = {}
        for row in self.conn.execute("SELECT id, agent_group, channel, chat_id, thread_id, epoch FROM sessions"):
            self._cache[row[0]] = SessionInfo(
                row[0], row[1], ev.Route(channel=row[2], chat_id=row[3], thread_id=row[4])
            )
            self._epochs[row[0]] = int(row[5])
        self._groups: dict[str, ev.GroupSettings] = {}
        for group, data in self.conn.execute("SELECT agent_group, settings FROM group_settings"):
            try:
                self._groups[group] = _settings_decoder.decode(data)
            except msgspec.DecodeError as exc:  # ValidationError too: a newer version's shape
                log.warning("agent group %s: stored settings unreadable (%s); using config.toml's", group, exc)

    def get(self, session_id: str) -> SessionInfo | None:
        return self._cache.get(session_id)

    def put(self, info: SessionInfo) -> None:
        if self._cache.get(info.id) == info:
            return
        self.conn.execute(
            "INSERT INTO sessions (id, agent_group, channel, chat_id, thread_id, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET"
            " channel = excluded.channel, chat_id = excluded.chat_id, thread_id = excluded.thread_id,"
            " updated_at = excluded.updated_at",
            (info.id, info.agent_group, info.route.channel, info.route.chat_id, info.route.thread_id, time.time()),
        )
        self._cache[info.id] = info

    def epoch(self, session_id: str) -> int:
        """The placement epoch this runner last held the session's folder at (0: none known)."""
        return self._epochs.get(session_id, 0)

    def set_epoch(self, session_id: str, epoch: int) -> None:
        """After a claim (`put` the session first). Only ever raised: a late, older claim changes nothing."""
        if epoch <= self._epochs.get(session_id, 0):
            return
        self.conn.execute("UPDATE sessions SET epoch = ? WHERE id = ? AND epoch < ?", (epoch, session_id, epoch))
        self._epochs[session_id] = epoch

    def set_destinations(self, session_id: str, routes: list[ev.Route]) -> None:
        """The chats (besides its own) this session may send to, as the router last said."""
        with self._tx():  # all of them or none: never a half-replaced list
            self.conn.execute("DELETE FROM destinations WHERE session_id = ?", (session_id,))
            self.conn.executemany(
                "INSERT OR REPLACE INTO destinations VALUES (?, ?, ?, ?)",
                [(session_id, r.channel, r.chat_id, r.thread_id) for r in routes],
            )

    def destinations(self, session_id: str) -> dict[tuple[str, str], ev.Route]:
        rows = self.conn.execute(
            "SELECT channel, chat_id, thread_id FROM destinations WHERE session_id = ?", (session_id,)
        ).fetchall()
        return {(r[0], r[1]): ev.Route(channel=r[0], chat_id=r[1], thread_id=r[2]) for r in rows}

    def set_group_settings(self, agent_group: str, settings: ev.GroupSettings) -> bool:
        """Keep the router's latest snapshot of a group's settings; an older one arriving late is ignored.
        True if it changed what is kept."""
        kept = self._groups.get(agent_group)
        if kept == settings or (kept is not None and kept.changed_at > settings.changed_at):
            return False
        self.conn.execute(
            "INSERT INTO group_settings VALUES (?, ?, ?, ?) ON CONFLICT (agent_group) DO UPDATE SET"
            " settings = excluded.settings, changed_at = excluded.changed_at, updated_at = excluded.updated_at",
            (agent_group, msgspec.json.encode(settings).decode(), settings.changed_at, time.time()),
        )
        self._groups[agent_group] = settings
        return True

    def group_settings(self, agent_group: str) -> ev.GroupSettings | None:
        """The router's last word on the group's settings; None if it never sent one."""
        return self._groups.get(agent_group)

    def had_starter(self, agent_group: str, digest: str) -> bool:
        """Whether the group's folder here has had this starter CLAUDE.md (`put_starter`)."""
        found = self.conn.execute(
            "SELECT 1 FROM starters WHERE agent_group = ? AND digest = ?", (agent_group, digest)
        ).fetchone()
        return found is not None

    def put_starter(self, agent_group: str, digest: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO starters VALUES (?, ?, ?)", (agent_group, digest, time.time()))

    def put_question(self, question_id: str, session_id: str, options: tuple[str, ...]) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO questions VALUES (?, ?, ?, ?)",
            (question_id, session_id, json.dumps(options), time.time()),
        )

    def take_question(self, question_id: str) -> tuple[str, tuple[str, ...]] | None:
        """The session that asked, once: a second decision for the same question finds nothing."""
        row = self.conn.execute(
            "DELETE FROM questions WHERE id = ? RETURNING session_id, options", (question_id,)
        ).fetchone()
        return (str(row[0]), tuple(json.loads(row[1]))) if row else None

    def put_cli_write(self, request_id: str, session_id: str, argv: list[str]) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO cli_writes (id, session_id, argv, asked_at) VALUES (?, ?, ?, ?)",
            (request_id, session_id, json.dumps(argv), time.time()),
        )

    def cli_write(self, request_id: str) -> tuple[str, list[str]] | None:
        """The session and command of a write of ours, decided or not; None for anyone else's."""
        row = self.conn.execute("SELECT session_id, argv FROM cli_writes WHERE id = ?", (request_id,)).fetchone()
        return (str(row[0]), [str(a) for a in json.loads(row[1])]) if row else None

    def cli_writes_waiting(self, session_id: str) -> int:
        """Writes of the session no admin has decided yet."""
        return int(
            self.conn.execute(
                "SELECT count(*) FROM cli_writes WHERE session_id = ? AND decision IS NULL", (session_id,)
            ).fetchone()[0]
        )

    def decide_cli_write(self, decision: ev.ApprovalDecision) -> tuple[str, list[str]] | None:
        """The session and command of a waiting write, now decided. Another decision for it finds nothing; the
        same one again (redelivered after a failure) finds it still. The row stays (with the decision) until
        `done_cli_write`, so a crash in between does it again."""
        said = ev.encode(decision).decode()
        row = self.conn.execute(
            "UPDATE cli_writes SET decision = ? WHERE id = ? AND (decision IS NULL OR decision = ?)"
            " RETURNING session_id, argv",
            (said, decision.id, said),
        ).fetchone()
        return (str(row[0]), [str(a) for a in json.loads(row[1])]) if row else None

    def undecided_cli_writes(self) -> list[tuple[str, str, list[str]]]:
        """Writes no admin has decided yet, oldest first: approval id, session, command."""
        rows = self.conn.execute(
            "SELECT id, session_id, argv FROM cli_writes WHERE decision IS NULL ORDER BY asked_at"
        ).fetchall()
        return [(str(r[0]), str(r[1]), [str(a) for a in json.loads(r[2])]) for r in rows]

    def decided_cli_writes(self) -> list[tuple[ev.ApprovalDecision, str, list[str]]]:
        """Writes decided and not yet done (a runner that stopped in between): decision, session, command."""
        rows = self.conn.execute(
            "SELECT decision, session_id, argv FROM cli_writes WHERE decision IS NOT NULL ORDER BY asked_at"
        ).fetchall()
        return [(_decision_decoder.decode(r[0]), str(r[1]), [str(a) for a in json.loads(r[2])]) for r in rows]

    def done_cli_write(self, request_id: str) -> None:
        self.conn.execute("DELETE FROM cli_writes WHERE id = ?", (request_id,))

    def all(self) -> list[SessionInfo]:
        return list(self._cache.values())


class UnsafeSessionFolder(RuntimeError):
    pass


def check_files(folder: Path) -> None:
    """The agent can write this folder: never follow a link it planted to a file of ours."""
    for name in (sessiondb.INBOUND, sessiondb.OUTBOUND):
        path = folder / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise UnsafeSessionFolder(f"{path} is not a regular file")


def claim_folder(folder: Path, epoch: int, runner: str) -> sessiondb.Fence | None:
    """Take or hold the session's folder for this runner before anything is written into it (`sessiondb.claim`):
    raises sessiondb.Fenced when a later placement holds it. Makes the folder if need be."""
    folder.mkdir(parents=True, exist_ok=True)
    check_files(folder)
    return sessiondb.claim(folder, epoch, runner)


def prepare_folder(folder: Path, owner_uid: int | None) -> None:
    """Create the session folder and its DB pair; hand it to the container's user when we are root."""
    folder.mkdir(parents=True, exist_ok=True)
    check_files(folder)
    with safefs.folder(folder) as top:
        for sub in ("inbox", "outbox"):
            _own_folder(top, folder, sub)
    sessiondb.ensure_inbound(folder)
    sessiondb.ensure_outbound(folder)
    if owner_uid is not None:
        chown_tree(folder, owner_uid)


def _own_folder(top: int, folder: Path, name: str) -> None:
    """A real folder `name` in the session folder: a link (or a file) the agent put in its place goes first. What the
    runner takes from or puts into it later is opened by descriptor all the same, as the agent may put one back."""
    try:
        found = os.stat(name, dir_fd=top, follow_symlinks=False)
    except FileNotFoundError:
        found = None
    if found is not None and not stat.S_ISDIR(found.st_mode):
        log.warning("session folder %s: its %s was no folder (a link?); made one in its place", folder, name)
        os.unlink(name, dir_fd=top)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=top)


def chown_tree(root: Path, uid: int) -> None:
    """Hand `root` (a folder the host chose) and all in it to `uid`. An agent can write in it: nothing below is
    followed through a link, not even one swapped in while the tree is walked (`safefs.give`)."""
    with safefs.folder(root, follow=True) as top:
        safefs.give(top, uid)


def adopt_conversation(shared_home: Path, home: Path, folder: Path) -> None:
    """Upgrade from one Claude Code home per agent group: copy this session's stored conversation
    from the group's old home into the session's own, so it resumes instead of starting over."""
    projects = shared_home / ".claude" / "projects"
    if not projects.is_dir() or not (folder / sessiondb.OUTBOUND).exists():
        return
    conversation = sessiondb.get_state(folder, sessiondb.CONVERSATION_KEY)
    if not conversation:
        return
    for transcript in projects.glob(f"*/{conversation}.jsonl"):
        target = home / transcript.relative_to(shared_home)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(transcript, target)
        log.info("copied conversation %s into the session's own home %s", conversation, home)


def ring(folder: Path) -> None:
    """Tell the agent to look at inbound.db now; if nobody listens, its slow poll will."""
    unixsock.ring(folder / sessiondb.AGENT_BELL)


class _Bell(asyncio.DatagramProtocol):
    def __init__(self, on_ring: Callable[[], None]) -> None:
        self.on_ring = on_ring

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.on_ring()


async def listen_bell(folder: Path, on_ring: Callable[[], None], owner_uid: int | None) -> asyncio.DatagramTransport:
    """The host's doorbell in a session folder: the agent rings it after writing outbound.db."""
    path = folder / sessiondb.HOST_BELL
    if path.is_dir() and not path.is_symlink():  # the agent may write here: a folder in the bell's place goes
        shutil.rmtree(path)
    sock = unixsock.bind(path, socket.SOCK_DGRAM, owner=owner_uid)  # by hand: uvloop takes no AF_UNIX local_addr
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Bell(on_ring), sock=sock)
    return transport


def record_cli_write(folder: Path, request_id: str, argv: list[str]) -> None:
    """Keep a write the agent asked for in its folder (`sessiondb.keep_cli_write`; raises Fenced if it moved)."""
    check_files(folder)
    sessiondb.keep_cli_write(folder, request_id, argv)


def cli_writes_in(folder: Path) -> list[tuple[str, list[str]]]:
    check_files(folder)
    return sessiondb.kept_cli_writes(folder)


def forget_cli_write(folder: Path, request_id: str) -> None:
    check_files(folder)
    sessiondb.drop_cli_write(folder, request_id)


def told(folder: Path, key: str) -> bool:
    """Whether the host's note `key` (`Runner.note`: one row per key) is in the session: what it tells is done."""
    check_files(folder)
    return (folder / sessiondb.INBOUND).exists() and bool(sessiondb.inbound_by_id(folder, [key]))


def holds(folder: Path) -> bool:
    """Whether this runner may still act for the session, before what no folder write covers (the control call of
    an approved write): False once its fence names another runner, which acts instead. A folder that cannot be read
    says nothing either way."""
    try:
        check_files(folder)
        sessiondb.check_fence(folder)
    except sessiondb.Fenced:
        return False
    except (sqlite3.Error, OSError, UnsafeSessionFolder):
        pass
    return True
