"""`router.db` at work: the view each message is decided on, the effects of each decision, the
approvals it waits on, and the outbox of what must be published. Owned by the router alone.

Synchronous on purpose: the service runs every call on one dedicated thread, one transaction per batch.
"""

from __future__ import annotations

import functools
import logging
import secrets
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

import msgspec

from clawden import config, logs, outbox
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.servicedb import unwritable
from clawden.setup import write_new_memory
from services.router import cards, engage, notices, placement, relay, schema
from services.router.entities import ALL_CHATS, ALWAYS, TERMINAL_CHANNEL, UnknownSenderPolicy, user_id_of

log = logging.getLogger("clawden.router")

APPROVAL_TTL = 7 * 86400.0
MAX_HELD = 20  # messages one pending approval may hold; more would let a stranger fill the disk
# Longer than any stream keeps a message (7 days) and than any bridge keeps retrying.
PROCESSED_KEEP = 30 * 86400.0
DROPPED_KEEP = 90 * 86400.0
OWNER_BY_PAIRING = "pairing"
# The most NATS carries in one message unless its server says otherwise (`max_payload`, which the service sets
# from its connection), and room for a publish's headers (`Nats-Msg-Id`, besides the id itself).
MAX_PAYLOAD = 1024 * 1024
HEADER_ROOM = 64

_held_decoder = msgspec.json.Decoder(ev.InboundMessage)
_route_decoder = msgspec.json.Decoder(ev.Route)


# What the router routes (card clicks go to the approvals service).
Routable = ev.InboundMessage | ev.InboundEdit | ev.InboundDelete | ev.ChatMoved | ev.MessagesLost


class RouterError(Exception):
    """A request the router refuses; the message is for a person."""


class WakeRefused(Exception):
    """A wake or adoption its runner's decoder would refuse: a bug in the router, stopped before the outbox."""


class WakeTooLarge(Exception):
    """A wake past what the bus carries in one message: the message that caused it is refused instead."""


@dataclass
class Outcome:
    outgoing: list[outbox.Outgoing] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    failed: set[str] = field(default_factory=set)  # inbound keys whose routing raised
    unpublished: bool = False  # set by the adapter: some outgoing rows are still in the outbox


@dataclass(frozen=True, slots=True)
class _ChatRows:
    own: sqlite3.Row | None
    wildcard: sqlite3.Row | None

    @property
    def known(self) -> bool:
        return self.own is not None or self.wildcard is not None

    @property
    def policy(self) -> UnknownSenderPolicy:
        for row in (self.own, self.wildcard):
            if row is not None and row["unknown_sender_policy"]:
                policy: UnknownSenderPolicy = row["unknown_sender_policy"]
                return policy
        return "request_approval"

    @property
    def ids(self) -> tuple[int, int]:
        return (self.wildcard["id"] if self.wildcard else -1, self.own["id"] if self.own else -1)


@dataclass
class Roles:
    """Every role grant, kept in memory: small, read for every message, written only through here."""

    owners: list[str] = field(default_factory=list)
    admins: list[str] = field(default_factory=list)  # global
    scoped: dict[str, list[str]] = field(default_factory=dict)  # agent group -> its admins

    def standing(self, user: str) -> tuple[bool, bool, frozenset[str]]:
        return (
            user in self.owners,
            user in self.admins,
            frozenset(g for g, users in self.scoped.items() if user in users),
        )

    def approvers(self, agent_group: str | None) -> tuple[str, ...]:
        """Who may decide: the group's own admins, then global admins, then owners."""
        ordered = [*(self.scoped.get(agent_group, []) if agent_group else []), *self.admins, *self.owners]
        return tuple(dict.fromkeys(ordered))

    def may_decide(self, user: str, agent_group: str | None) -> bool:
        return user in self.approvers(agent_group)


class RouterStore(outbox.OutboxStore):
    migrations = schema.MIGRATIONS
    # NORMAL in WAL survives any process crash; only a power cut can lose the last commits, the
    # same bound JetStream's own file store gives (it syncs every couple of minutes).
    synchronous = "NORMAL"
    foreign_keys = True

    def __init__(self, conn: sqlite3.Connection, runner_id: str) -> None:
        super().__init__(conn)
        self.runner_id = runner_id  # where new sessions go until a runner's heartbeat says otherwise
        self.runners = placement.Runners()  # every runner's latest heartbeat (the service feeds it)
        self.dead_after = config.RunnerConfig().dead_after  # `[runner] dead_after` (set by the service)
        self.shared_storage = False  # `[runner] shared_storage` (set by the service): sessions of a gone runner move
        self.groups_dir: Path | None = None  # where a new agent's folder goes (set by the service)
        self.max_payload = MAX_PAYLOAD  # the connection's `max_payload` (set by the service): no wake is larger
        self.roles = Roles()
        self._pairing: dict[str, tuple[str, float]] = {}
        self._destinations: dict[str, tuple[ev.Destination, ...]] = {}
        self._settings: dict[str, ev.GroupSettings] = {}
        self._pins: dict[str, str] = {}
        self.reload()

    @classmethod
    def open(cls, path: Path, runner_id: str = "local") -> Self:
        return cls(cls.connect(path), runner_id)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._tx() as conn:
                yield conn
        except BaseException:
            self.reload()  # the in-memory copies may hold what was just rolled back
            raise

    def reload(self) -> None:
        """Re-read the in-memory copies (roles, pairing codes, destinations, group settings) after a write."""
        roles = Roles()
        for row in self.conn.execute("SELECT user_id, role, agent_group FROM roles ORDER BY granted_at, user_id"):
            if row["role"] == "owner":
                roles.owners.append(row["user_id"])
            elif row["agent_group"]:
                roles.scoped.setdefault(row["agent_group"], []).append(row["user_id"])
            else:
                roles.admins.append(row["user_id"])
        self.roles = roles
        self._pairing = {
            row["channel"]: (row["digest"], row["expires_at"])
            for row in self.conn.execute("SELECT channel, digest, expires_at FROM pairing_codes")
        }
        self._destinations.clear()
        self._settings.clear()
        self._pins.clear()

    # --- first start ------------------------------------------------------------------------------

    def seed(self, group: str, channel: str, owner_login: str | None, now: float) -> list[str]:
        """Once per install: agent group `group` answering every chat of `channel` (the terminal),
        whose user is the owner. Returns what it did, for the log."""
        done: list[str] = []
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM meta WHERE key = 'seeded'").fetchone():
                return done
            if not db.execute("SELECT 1 FROM agent_groups LIMIT 1").fetchone():
                db.execute(
                    "INSERT INTO agent_groups (name, folder, created_at, changed_at) VALUES (?, ?, ?, ?)",
                    (group, group, now, now),
                )
                mg = self._ensure_chat_row(channel, ALL_CHATS, f"every {channel} chat", False, "public", now)
                db.execute(
                    "INSERT OR IGNORE INTO wirings (messaging_group, agent_group, created_at) VALUES (?, ?, ?)",
                    (mg, group, now),
                )
                done.append(f"agent group {group!r} answering every {channel} chat")
            if owner_login and not db.execute("SELECT 1 FROM roles WHERE role = 'owner'").fetchone():
                user = f"{channel}:{owner_login}"
                self.grant(user, "owner", "", "install", now)
                done.append(f"owner {user}")
            db.execute("INSERT INTO meta (key, value) VALUES ('seeded', ?)", (str(now),))
        self.reload()
        return done

    # --- routing ----------------------------------------------------------------------------------

    def route_batch(self, batch: Sequence[Routable], now: float) -> Outcome:
        """Route a batch in one transaction; each message in its own savepoint, so one that fails
        (a bug, not bad input: the decision is total) is retried alone and the rest commit. A chat's move
        to a new id is applied in its place among the messages, so what follows it finds the chat."""
        out = Outcome()
        moved = False
        with self.transaction() as db:
            for event in batch:  # card clicks never come here: the service forwards them to approvals
                if event.key in out.failed:
                    continue
                db.execute("SAVEPOINT one")
                try:
                    if self._first(event.key, now, out):
                        moved = self._take(event, now, out) or moved
                except Exception as exc:
                    if unwritable(exc):  # no fault of this message's: the whole batch waits (Router.settle)
                        raise
                    log.exception("routing %s failed", event.key)
                    db.execute("ROLLBACK TO one")
                    out.failed.add(event.key)
                    out.counts["failed"] += 1
                db.execute("RELEASE one")
        if moved:
            self.reload()  # destinations may name the chat
        out.outgoing = self.outgoing()
        return out

    def _take(self, event: Routable, now: float, out: Outcome) -> bool:
        """One inbound event, the first time it comes; True when it moved a chat to a new id."""
        if isinstance(event, ev.ChatMoved):
            return self._move_chat(event, out)
        if isinstance(event, ev.MessagesLost):
            self._tell_owners_lost(event, out)
        elif isinstance(event, ev.InboundEdit | ev.InboundDelete):
            self._revise(event, out)
        # One its bridge refused (a mail whose From failed DKIM) is no command whoever it names as its sender:
        # engage records it dropped with the bridge's reason, and it answers nothing.
        elif event.refused or not self._name_agent(event, now, out):
            out.counts["routed"] += 1
            self._route(event, now, out)
        return False

    def move_chat(self, moved: ev.ChatMoved) -> Outcome:
        """`clawden.ctl.router.chats` op `move`: the same move, asked for by a person."""
        out = Outcome()
        with self.transaction():
            found = self._move_chat(moved, out)
        if found:
            self.reload()
        out.outgoing = self.outgoing()
        return out

    def _move_chat(self, moved: ev.ChatMoved, out: Outcome) -> bool:
        """A chat got a new id on its platform (a Telegram group became a supergroup): its row, wirings,
        sessions (so the conversation goes on), destinations and held approvals follow it, and the move is
        announced on `event.router.chat_moved`. False when no chat has the old id (already moved)."""
        db = self.conn
        channel, old_id, new_id = moved.channel, moved.old_chat_id, moved.new_chat_id
        old = db.execute(
            "SELECT * FROM messaging_groups WHERE channel = ? AND chat_id = ?", (channel, old_id)
        ).fetchone()
        if old is None or old_id == new_id or ALL_CHATS in (old_id, new_id):
            out.counts["moves_ignored"] += 1
            return False
        new = db.execute(
            "SELECT * FROM messaging_groups WHERE channel = ? AND chat_id = ?", (channel, new_id)
        ).fetchone()
        mg = int(old["id"])
        if new is None:
            db.execute("UPDATE messaging_groups SET chat_id = ? WHERE id = ?", (new_id, mg))
        else:
            # The new id wrote first (a message overtook the move): the old chat's settings win, what
            # the new row holds that the old one does not is kept.
            mg = int(new["id"])
            self._merge_approvals(int(old["id"]), mg, out)
            for table in ("wirings", "approvals", "unregistered_senders"):
                db.execute(
                    f"UPDATE OR IGNORE {table} SET messaging_group = ? WHERE messaging_group = ?", (mg, old["id"])
                )
            db.execute(
                "UPDATE messaging_groups SET name = ?, is_group = ?, unknown_sender_policy = ?, denied_at = ?"
                " WHERE id = ?",
                (old["name"] or new["name"], old["is_group"], old["unknown_sender_policy"], old["denied_at"], mg),
            )
            db.execute("DELETE FROM messaging_groups WHERE id = ?", (old["id"],))
        # The conversation goes on under the new id; a session the new id started meanwhile gives way.
        db.execute(
            "DELETE FROM sessions WHERE channel = ?1 AND chat_id = ?2 AND (agent_group, thread_id) IN"
            " (SELECT agent_group, thread_id FROM sessions WHERE channel = ?1 AND chat_id = ?3)",
            (channel, new_id, old_id),
        )
        sessions = db.execute(
            "UPDATE sessions SET chat_id = ?, messaging_group = ? WHERE channel = ? AND chat_id = ?",
            (new_id, mg, channel, old_id),
        ).rowcount
        db.execute("UPDATE destinations SET chat_id = ? WHERE channel = ? AND chat_id = ?", (new_id, channel, old_id))
        # Held messages are replayed when their approval is decided: they must name the chat as it is now.
        for approval_id, key, blob in db.execute(
            "SELECT h.approval_id, h.key, h.event FROM held_messages h JOIN approvals a ON a.id = h.approval_id"
            " WHERE a.messaging_group = ?",
            (mg,),
        ).fetchall():
            event = _held_decoder.decode(blob)
            if event.route.chat_id == old_id:
                event = msgspec.structs.replace(event, route=msgspec.structs.replace(event.route, chat_id=new_id))
                db.execute(
                    "UPDATE held_messages SET event = ? WHERE approval_id = ? AND key = ?",
                    (ev.encode(event), approval_id, key),
                )
        self.emit(subjects.event("router", "chat_moved"), f"router:{moved.key}", moved, lane=f"chat:{channel}:{new_id}")
        log.warning(
            "%s chat %s is now %s: %d session(s) and its wirings moved with it", channel, old_id, new_id, sessions
        )
        out.counts["chats_moved"] += 1
        return True

    def _merge_approvals(self, old_mg: int, new_mg: int, out: Outcome) -> None:
        """Both ids of a moving chat wait for the owner to connect them (one approval per chat): the old one's
        held messages join the new one's, in the order they were held, and a decision on either card settles
        both (`merged_approvals`). It keeps the later expiry and whoever was asked to name a new agent for it."""
        db = self.conn
        rows = {
            r["messaging_group"]: r
            for r in db.execute(
                "SELECT * FROM approvals WHERE kind = 'channel' AND messaging_group IN (?, ?)", (old_mg, new_mg)
            )
        }
        gone, kept = rows.get(old_mg), rows.get(new_mg)
        if gone is None or kept is None:
            return  # at most one is waiting: it follows the chat as it is
        held = db.execute(
            "SELECT key, event, held_at FROM held_messages WHERE approval_id IN (?1, ?2)"
            " ORDER BY held_at, approval_id = ?2, rowid",
            (gone["id"], kept["id"]),
        ).fetchall()
        # Written again in one order, so a replay goes as they came; past MAX_HELD too: none is lost here.
        db.execute("DELETE FROM held_messages WHERE approval_id IN (?, ?)", (gone["id"], kept["id"]))
        db.executemany(
            "INSERT OR IGNORE INTO held_messages (approval_id, key, event, held_at) VALUES (?, ?, ?, ?)",
            [(kept["id"], *row) for row in held],
        )
        db.execute(
            "UPDATE approvals SET expires_at = max(expires_at, ?), naming_by = iif(naming_by = '', ?, naming_by),"
            " naming_at = iif(naming_by = '', ?, naming_at) WHERE id = ?",
            (gone["expires_at"], gone["naming_by"], gone["naming_at"], kept["id"]),
        )
        db.execute("UPDATE merged_approvals SET into_id = ? WHERE into_id = ?", (kept["id"], gone["id"]))
        db.execute("INSERT INTO merged_approvals (id, into_id) VALUES (?, ?)", (gone["id"], kept["id"]))
        db.execute("DELETE FROM approvals WHERE id = ?", (gone["id"],))
        log.info("approval %s merged into %s: %d message(s) wait for it", gone["id"], kept["id"], len(held))
        out.counts["approvals_merged"] += 1

    def _tell_owners_lost(self, event: ev.MessagesLost, out: Outcome) -> None:
        """A platform dropped messages unread: each owner hears it where they read this channel."""
        routes = notices.owner_chats(self.roles.owners, event.channel)
        log.warning(
            "%s dropped %s message(s) before the bridge fetched them; telling %d owner chat(s)",
            event.channel,
            event.count or "some",
            len(routes),
        )
        for route in routes:
            notice = notices.messages_lost(event, route)
            self.emit(
                subjects.outbound(route.channel, route.chat_id),
                notice.id,
                notice,
                lane=f"chat:{route.channel}:{route.chat_id}",
            )
        out.counts["lost_noticed"] += 1

    def _revise(self, event: ev.Revision, out: Outcome) -> None:
        """A person's edit or delete follows the message to each session it went to, as a row of its own
        (the agent runner decides what it means when it reads). One of a message the router never passed on
        (not engaged, an unknown chat, from before the wiring, held for an approval) goes nowhere. An edit
        alone never engages, even where its new text would have (a mention added later): the platforms do
        not treat an edit as a new message either, and an old message must not be answered out of the blue."""
        original = f"{event.route.channel}:{event.message_id}"
        rows = self.conn.execute(
            "SELECT r.*, s.runner, s.epoch FROM routed r JOIN sessions s ON s.id = r.session_id WHERE r.key = ?"
            " ORDER BY r.agent_group",
            (original,),
        ).fetchall()
        if not rows:
            log.debug("%s: %s was never passed on to an agent; nothing to revise", event.key, original)
            out.counts["revisions_ignored"] += 1
            return
        for row in rows:
            if isinstance(event, ev.InboundEdit) and event.sender.id != row["sender_id"]:
                # Only the author may edit: Telegram, Slack and Discord enforce it; Matrix leaves it to the
                # receiver ("the replacement and original events must have the same sender", m.replace).
                log.warning("%s: an edit of %s by someone else than its author; ignored", event.key, original)
                out.counts["revisions_refused"] += 1
                continue
            self._wake_revision(event, row)
            out.counts["revisions"] += 1

    def _wake_revision(self, event: ev.Revision, row: sqlite3.Row) -> None:
        edit = isinstance(event, ev.InboundEdit)
        group = str(row["agent_group"])
        wake = ev.Wake(
            session_id=row["session_id"],
            agent_group=group,
            route=ev.Route(channel=row["channel"], chat_id=row["chat_id"], thread_id=row["thread_id"]),
            message=ev.WakeMessage(
                id=f"{event.key}:{group}",
                kind="chat",
                text=event.text if isinstance(event, ev.InboundEdit) else "",
                sender=event.sender,
                sent_at=event.edited_at if isinstance(event, ev.InboundEdit) else event.deleted_at,
                # An edit wakes the agent where the message did (a corrected question is answered, once); a
                # delete never does: it asks for nothing, and a note about it waits for the next message.
                trigger=edit and bool(row["trigger"]),
                platform_message_id=event.message_id,
                revision="edit" if edit else "delete",
                revises=row["row_id"],
            ),
            destinations=self.destinations(group),
            group=self.group_settings(group),
            epoch=row["epoch"],
        )
        self._emit_wake(row["runner"], wake.key, wake, lane=row["session_id"])
        log.info(
            "%s -> session %s of %s",
            event.key,
            row["session_id"],
            group,
            extra=logs.context(row["session_id"], group, event.key),
        )

    def _route(self, event: ev.InboundMessage, now: float, out: Outcome, *, only: str | None = None) -> None:
        chat = self._chat_rows(event.route.channel, event.route.chat_id)
        view = self.view(event, chat, now)
        decision = engage.decide(event, view, only=only)
        if why := self._unless_too_large(functools.partial(self._apply, event, chat, view, decision, now, out), out):
            # Nothing of it is done (a wake past the bus's limit would wait in the outbox for ever, and hold up
            # its session's lane): recorded, and the chat told where the agent would have answered.
            self.record_drop(event, view.sender.user_id, why, now)
            out.counts["dropped"] += 1
            if any(d.trigger for d in decision.deliveries):
                self._reply(
                    event, f"Not passed on: this message is {why}. Send it in smaller parts.", 0, out, kind="error"
                )

    def _unless_too_large(self, work: Callable[[], None], out: Outcome) -> str:
        """Do `work` unless a wake of it is too large for the bus: then undo all of it, and say why ("" when done)."""
        counts = out.counts.copy()
        self.conn.execute("SAVEPOINT wake")
        try:
            work()
        except WakeTooLarge as exc:
            self.conn.execute("ROLLBACK TO wake")
            out.counts = counts
            return str(exc)
        finally:
            self.conn.execute("RELEASE wake")
        return ""

    def _emit_wake(self, runner: str, msg_id: str, wake: ev.Wake | ev.Adopt, lane: str) -> None:
        """Queue a wake or an adoption for `runner`, as that runner will read it: one its decoder would refuse is
        a bug here, raised now instead of published to be refused there (the message stays unanswered, the
        session unfenced); one past the bus's limit is `WakeTooLarge`, for the caller to refuse what caused it."""
        payload = ev.encode(wake)
        try:
            ev.WAKE_DECODER.decode(payload)
        except msgspec.ValidationError as exc:
            raise WakeRefused(f"{wake.key}: runner {runner} would refuse it: {exc}") from None
        limit = self.max_payload - HEADER_ROOM - len(msg_id.encode())
        if len(payload) > limit:
            raise WakeTooLarge(
                f"too large to pass on to an agent ({len(payload)} bytes with the agent's settings; the bus takes"
                f" {limit})"
            )
        self.emit(subjects.wake(runner), msg_id, wake, lane=lane)
        if isinstance(wake, ev.Wake):  # an agent-shared session's answer goes to the chat its last wake named
            self.conn.execute(
                "UPDATE sessions SET last_route = ? WHERE id = ? AND chat_id = ?",
                (msgspec.json.encode(wake.route), wake.session_id, ALL_CHATS),
            )

    @staticmethod
    def _conversation(row: sqlite3.Row) -> ev.Route | None:
        """Where a session's answers go: its chat, or an agent-shared session's last (each wake names the chat that
        spoke); None for an agent-shared one no wake has named a chat for since the router kept it."""
        if row["chat_id"] != ALL_CHATS:
            return ev.Route(channel=row["channel"], chat_id=row["chat_id"], thread_id=row["thread_id"] or None)
        return _route_decoder.decode(row["last_route"]) if row["last_route"] else None

    def _chat_rows(self, channel: str, chat_id: str) -> _ChatRows:
        own = wildcard = None
        for row in self.conn.execute(
            "SELECT id, chat_id, name, is_group, unknown_sender_policy, denied_at FROM messaging_groups"
            " WHERE channel = ? AND chat_id IN (?, '*')",
            (channel, chat_id),
        ):
            if row["chat_id"] == chat_id:
                own = row
            else:
                wildcard = row
        return _ChatRows(own, wildcard)

    def view(self, event: ev.InboundMessage, chat: _ChatRows, now: float) -> engage.View:
        """What the router knows that bears on this message; only what the decision can use."""
        db = self.conn
        channel = event.route.channel
        user = user_id_of(channel, event.sender.id)
        code = self._pairing.get(channel)
        digest = code[0] if code and code[1] > now else ""
        wirings: dict[str, engage.Wiring] = {}
        if chat.known:
            wildcard_id, _ = chat.ids
            rows = db.execute(
                "SELECT messaging_group, agent_group, engage_mode, engage_pattern, sender_scope, ignored_messages,"
                " session_mode, priority FROM wirings WHERE messaging_group IN (?, ?)",
                chat.ids,
            ).fetchall()
            # A chat's own wirings replace the channel-wide (`*`) ones: a chat wired to an agent group is
            # answered by the groups wired to it alone, and `*` serves the chats with no wiring of their own.
            own = [row for row in rows if row["messaging_group"] != wildcard_id]
            for row in own or rows:
                wirings[row["agent_group"]] = engage.Wiring(
                    row["agent_group"],
                    row["engage_mode"],
                    row["engage_pattern"],
                    row["sender_scope"],
                    row["ignored_messages"],
                    row["session_mode"],
                    row["priority"],
                )
        owner, admin, admin_of = self.roles.standing(user)
        members: set[str] = set()
        denied: set[str] = set()
        pending: set[str] = set()
        if wirings:
            for kind, group in db.execute(
                "SELECT 'm', agent_group FROM members WHERE user_id = ?1"
                " UNION ALL SELECT 'd', agent_group FROM sender_denials WHERE user_id = ?1"
                " UNION ALL SELECT 'p', agent_group FROM approvals WHERE kind = 'sender' AND user_id = ?1",
                (user,),
            ):
                (members if kind == "m" else denied if kind == "d" else pending).add(group)
        sticky: frozenset[str] = frozenset()
        thread = engage.effective_thread(event)
        if thread and event.is_group and any(w.engage_mode == "mention-sticky" for w in wirings.values()):
            sticky = frozenset(
                row[0]
                for row in db.execute(
                    "SELECT agent_group FROM sessions WHERE channel = ? AND chat_id = ? AND thread_id = ?",
                    (channel, event.route.chat_id, thread),
                )
            )
        registration_pending = False
        can_register = has_groups = True
        if not wirings:
            registration_pending = (
                chat.own is not None
                and db.execute(
                    "SELECT 1 FROM approvals WHERE kind = 'channel' AND messaging_group = ?", (chat.own["id"],)
                ).fetchone()
                is not None
            )
            can_register = bool(self.roles.approvers(None))
            has_groups = db.execute("SELECT 1 FROM agent_groups LIMIT 1").fetchone() is not None
        return engage.View(
            chat=engage.Chat(
                known=chat.known,
                policy=chat.policy,
                denied=chat.own is not None and chat.own["denied_at"] is not None,
                registration_pending=registration_pending,
            ),
            sender=engage.Standing(
                user,
                owner=owner,
                admin=admin,
                admin_of=admin_of,
                member_of=frozenset(members),
                denied_for=frozenset(denied),
                pending_for=frozenset(pending),
            ),
            wirings=tuple(wirings.values()),
            sticky=sticky,
            pairing_digest=digest,
            can_register=can_register,
            has_groups=has_groups,
        )

    def _apply(
        self,
        event: ev.InboundMessage,
        chat: _ChatRows,
        view: engage.View,
        decision: engage.Decision,
        now: float,
        out: Outcome,
    ) -> None:
        recorded_drop = bool(decision.dropped and decision.record)
        if not decision.actions and not recorded_drop:
            out.counts["ignored"] += 1
            return
        mg = self._chat_of(event, chat, now)
        user = view.sender.user_id
        self._touch_user(user, event.sender.name, now)
        for index, action in enumerate(decision.actions):
            if isinstance(action, engage.Deliver):
                self._deliver(event, action, mg, now, out)
            elif isinstance(action, engage.Reply):
                self._reply(event, action.text, index, out, kind="error" if action.refusal else "reply")
            elif isinstance(action, engage.AskSender):
                self._hold("sender", event, mg, user, action.agent_group, now, out)
            elif isinstance(action, engage.AskChannel):
                self._hold("channel", event, mg, user, "", now, out)
            elif isinstance(action, engage.NoteSender):
                self.conn.execute(
                    "INSERT INTO unregistered_senders (user_id, messaging_group, agent_group, name, reason,"
                    " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                    " message_count = message_count + 1, last_seen = excluded.last_seen,"
                    " reason = excluded.reason, name = excluded.name",
                    (user, mg, action.agent_group, event.sender.name, action.reason, now, now),
                )
            elif isinstance(action, engage.PairOwner):
                self.grant(user, "owner", "", OWNER_BY_PAIRING, now)
                self.conn.execute("DELETE FROM pairing_codes WHERE channel = ?", (event.route.channel,))
                self._pairing.pop(event.route.channel, None)
                log.warning("%s paired as an owner on %s", user, event.route.channel)
                self._reply(event, f"Paired: {user} is now an owner of this Clawden.", index, out)
                out.counts["paired"] += 1
        if recorded_drop:
            self.record_drop(event, user, decision.dropped, now)
            out.counts["dropped"] += 1
            if event.route.channel == TERMINAL_CHANNEL:  # the machine's owner: never left without a word
                self._reply(event, f"(not delivered: {decision.dropped})", len(decision.actions), out, kind="error")

    def _chat_of(self, event: ev.InboundMessage, chat: _ChatRows, now: float) -> int:
        """The chat's own row, created on first contact (inheriting the channel's policy, if any)."""
        if chat.own is not None:
            return int(chat.own["id"])
        policy = None if chat.wildcard is not None else "request_approval"
        return self._ensure_chat_row(
            event.route.channel, event.route.chat_id, event.chat_name, event.is_group, policy, now
        )

    def _ensure_chat_row(
        self, channel: str, chat_id: str, name: str, is_group: bool, policy: str | None, now: float
    ) -> int:
        row = self.conn.execute(
            "INSERT INTO messaging_groups (channel, chat_id, name, is_group, unknown_sender_policy, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (channel, chat_id) DO UPDATE SET channel = channel"
            " RETURNING id",
            (channel, chat_id, name, int(is_group), policy, now),
        ).fetchone()
        return int(row[0])

    def _touch_user(self, user: str, name: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO users (id, display_name, created_at, last_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,"
            " display_name = iif(excluded.display_name = '', display_name, excluded.display_name)",
            (user, name, now, now),
        )

    def _deliver(self, event: ev.InboundMessage, action: engage.Deliver, mg: int, now: float, out: Outcome) -> None:
        key = action.session
        agent_shared = key.chat_id == ALL_CHATS
        new_id, placed = f"s-{secrets.token_hex(8)}", self._place(key.agent_group, now)
        session_id, runner, epoch = self.conn.execute(
            "INSERT INTO sessions (id, agent_group, channel, chat_id, thread_id, runner, created_at, last_message_at,"
            " messaging_group) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (agent_group, channel, chat_id, thread_id) DO UPDATE SET"
            # A person spoke: agents relaying into this session start counting hops afresh (relay.py).
            " last_message_at = excluded.last_message_at, hops = 0 RETURNING id, runner, epoch",
            (
                new_id,
                key.agent_group,
                key.channel,
                key.chat_id,
                key.thread_id,
                placed.runner,
                now,
                now,
                None if agent_shared else mg,
            ),
        ).fetchone()
        if session_id == new_id:
            self._placed(session_id, key.agent_group, placed, now)
        wake = ev.Wake(
            session_id=session_id,
            agent_group=action.agent_group,
            route=action.route,
            command=action.command,
            message=ev.WakeMessage(
                # Unique per agent group, so one message fanned out stays distinct everywhere.
                id=f"{event.key}:{action.agent_group}",
                kind="chat",
                text=event.text,
                sender=event.sender,
                sent_at=event.sent_at,
                trigger=action.trigger,
                attachments=event.attachments,
                platform_message_id=event.message_id,
            ),
            destinations=self.destinations(action.agent_group),
            group=self.group_settings(action.agent_group),
            epoch=epoch,
        )
        self._emit_wake(runner, wake.key, wake, lane=session_id)
        if action.trigger:
            self._tell_if_away(session_id, action.agent_group, runner, action.route, now)
        if not action.command:  # where a later edit or delete of it must go
            self.conn.execute(
                "INSERT OR REPLACE INTO routed (key, agent_group, session_id, row_id, channel, chat_id, thread_id,"
                " sender_id, trigger, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.key,
                    action.agent_group,
                    session_id,
                    wake.message.id,
                    action.route.channel,
                    action.route.chat_id,
                    action.route.thread_id,
                    event.sender.id,
                    int(action.trigger),
                    now,
                ),
            )
        out.counts["wakes" if action.trigger else "accumulated"] += 1
        log.info(
            "%s from %s:%s -> session %s of %s%s",
            event.key,
            event.route.channel,
            event.route.chat_id,
            session_id,
            action.agent_group,
            "" if action.trigger else " (context, no wake)",
            extra=logs.context(session_id, action.agent_group, event.key),
        )

    def _reply(
        self, event: ev.InboundMessage, text: str, index: int, out: Outcome, kind: Literal["reply", "error"] = "reply"
    ) -> None:
        reply = ev.OutboundMessage(
            id=f"router:{event.key}:{index}",
            route=event.route,
            text=text,
            reply_to=event.message_id,
            kind=kind,
            answering=event.message_id,
        )
        self.emit(
            subjects.outbound(event.route.channel, event.route.chat_id),
            reply.id,
            reply,
            lane=f"chat:{event.route.channel}:{event.route.chat_id}",
        )
        out.counts["replies"] += 1

    def destinations(self, agent_group: str) -> tuple[ev.Destination, ...]:
        cached = self._destinations.get(agent_group)
        if cached is None:
            cached = self._destinations[agent_group] = tuple(
                ev.Destination(
                    name=r["name"],
                    display_name=r["display_name"],
                    route=ev.Route(channel=r["channel"], chat_id=r["chat_id"], thread_id=r["thread_id"]),
                )
                for r in self.conn.execute(
                    "SELECT name, display_name, channel, chat_id, thread_id FROM destinations"
                    " WHERE agent_group = ? ORDER BY name",
                    (agent_group,),
                )
            )
        return cached

    def group_settings(self, agent_group: str) -> ev.GroupSettings | None:
        """The group's settings for the runner, as `clawden groups create|update` left them."""
        cached = self._settings.get(agent_group)
        if cached is None:
            row = self.conn.execute(
                "SELECT folder, model, assistant_name, container, starter_memory, changed_at FROM agent_groups"
                " WHERE name = ?",
                (agent_group,),
            ).fetchone()
            if row is None:
                return None
            base = {
                "folder": row["folder"],
                "model": row["model"],
                "assistant_name": row["assistant_name"],
                "starter_memory": row["starter_memory"],
                "changed_at": row["changed_at"],
            }
            try:
                cached = msgspec.convert(msgspec.json.decode(row["container"]) | base, ev.GroupSettings)
            except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
                # Written by an older version: the runner's own settings apply to the container.
                log.error("agent group %s: stored container settings unusable (%s); sending none", agent_group, exc)
                cached = msgspec.convert(base, ev.GroupSettings)
            self._settings[agent_group] = cached
        return cached

    def _place(self, agent_group: str, now: float) -> placement.Placement:
        """Where a session of this group would go if it were new (an existing one keeps its runner)."""
        pin = self._pins.get(agent_group)
        if pin is None:
            row = self.conn.execute("SELECT runner FROM agent_groups WHERE name = ?", (agent_group,)).fetchone()
            pin = self._pins[agent_group] = row[0] if row else ""
        return placement.place(
            self.runners.snapshot(),
            self.runners.hearing(now).listened(now),
            group=agent_group,
            pin=pin,
            dead_after=self.dead_after,
            fallback=self.runner_id,
        )

    def _tell_if_away(self, session_id: str, agent_group: str, runner: str, route: ev.Route, now: float) -> None:
        """The wake waits in the runner's durable until it is back (the session's folder is on its host); a chat
        whose runner is declared gone is told so, once per absence. With shared storage, a session that a live
        runner may take is moved there instead (`move_sessions`), and its chat is told nothing."""
        listened = self.runners.hearing(now).listened(now)
        since = placement.away_since(self.runners.snapshot(), runner, listened, self.dead_after)
        if since is None or (self.shared_storage and not self._place(agent_group, now).why):
            return
        told = self.conn.execute(
            "INSERT OR IGNORE INTO runner_away_told (session_id, runner, since) VALUES (?, ?, ?)",
            (session_id, runner, since),
        ).rowcount
        if not told:
            return
        notice = notices.runner_away(route, session_id, runner, since)
        self.emit(
            subjects.outbound(route.channel, route.chat_id),
            notice.id,
            notice,
            lane=f"chat:{route.channel}:{route.chat_id}",
        )
        log.warning(
            "runner %s silent for %.0f s: session %s waits for it, and its chat was told",
            runner,
            now - since,
            session_id,
            extra=logs.context(session_id, ""),
        )

    def _record_placement(self, session_id: str, agent_group: str, runner: str, epoch: int, now: float) -> None:
        """Where the session runs now, for whoever must know (the scheduler, the vault): the placement stream
        keeps the last record per session."""
        placed = ev.SessionPlaced(session_id=session_id, agent_group=agent_group, runner=runner, epoch=epoch, at=now)
        self.emit(subjects.placement(session_id), f"placed:{session_id}:{epoch}", placed, lane=session_id)

    def record_placements(self, now: float) -> Outcome:
        """Once, after the upgrade that began recording placements: a record for every session made before."""
        out = Outcome()
        with self._tx():
            if self.conn.execute("SELECT 1 FROM meta WHERE key = 'placements_recorded'").fetchone():
                return out
            rows = self.conn.execute("SELECT id, agent_group, runner, epoch FROM sessions").fetchall()
            for row in rows:
                self._record_placement(row["id"], row["agent_group"], row["runner"], row["epoch"], now)
            self.conn.execute("INSERT INTO meta (key, value) VALUES ('placements_recorded', ?)", (str(now),))
            out.counts["placements_recorded"] = len(rows)
            out.outgoing = self.outgoing()
        return out

    # --- a runner declared gone, with shared storage ----------------------------------------------------------

    def gone_runners(self, now: float) -> dict[str, float]:
        """The runners that hold sessions a live runner could take, and are declared gone (each with since when)."""
        holding = [r[0] for r in self.conn.execute("SELECT DISTINCT runner FROM sessions")]
        hearing = self.runners.hearing(now)
        gone = placement.gone(self.runners.snapshot(), holding, hearing.listened(now), self.dead_after, hearing.start)
        return {rid: since for rid, since in gone.items() if self._movable(rid, now)}

    def _movable(self, runner: str, now: float) -> list[sqlite3.Row]:
        """`runner`'s sessions that a live runner may take now (its group's pin and mounts allowing). An
        agent-shared session whose chat is not known yet (made before the router kept it, and silent since)
        waits for its next wake, which names one."""
        rows = self.conn.execute(
            "SELECT id, agent_group, channel, chat_id, thread_id, epoch, last_route FROM sessions WHERE runner = ?"
            " ORDER BY id",
            (runner,),
        ).fetchall()
        return [r for r in rows if self._conversation(r) is not None and not self._place(r["agent_group"], now).why]

    def move_sessions(self, gone: str, untaken: Mapping[str, Sequence[ev.Wake]], now: float) -> Outcome:
        """Move every session of the runner `gone` that a live runner may take: one epoch more, an `Adopt` to
        its new runner, then the wakes `gone` had not taken (`untaken`, read from its wake subject past its
        durable's ack floor) re-sent with the new epoch, and the new placement recorded. The session's folder is
        on storage both runners mount; the new runner fences it with the epoch, so `gone`, if it comes back,
        writes nothing more there. The caller has published the outbox first, so no wake for `gone` waits in
        it. Sessions no live runner may take (pinned to `gone`, or their mounts only there) stay and wait."""
        out = Outcome()
        with self._tx():
            for row in self._movable(gone, now):
                self.conn.execute("SAVEPOINT move")
                try:
                    self._move(row, gone, untaken.get(row["id"], ()), now, out)
                except (WakeRefused, WakeTooLarge):
                    # Never half sent: this session stays where it is, said at every round; the others move.
                    log.exception("session %s cannot move off runner %s", row["id"], gone)
                    self.conn.execute("ROLLBACK TO move")
                    out.counts["moves_refused"] += 1
                finally:
                    self.conn.execute("RELEASE move")
            out.outgoing = self.outgoing()
        return out

    def _move(self, row: sqlite3.Row, gone: str, untaken: Sequence[ev.Wake], now: float, out: Outcome) -> None:
        session_id, group = str(row["id"]), str(row["agent_group"])
        placed = self._place(group, now)
        epoch = int(row["epoch"]) + 1
        self.conn.execute("UPDATE sessions SET runner = ?, epoch = ? WHERE id = ?", (placed.runner, epoch, session_id))
        route = self._conversation(row)
        assert route is not None  # `_movable` keeps only sessions whose chat is known
        adopt = ev.Adopt(
            session_id=session_id,
            agent_group=group,
            route=route,
            epoch=epoch,
            from_runner=gone,
            destinations=self.destinations(group),
            group=self.group_settings(group),
        )
        self._emit_wake(placed.runner, adopt.key, adopt, lane=session_id)
        for wake in untaken:
            again = msgspec.structs.replace(wake, epoch=epoch)
            self._emit_wake(placed.runner, f"{wake.key}@{epoch}", again, lane=session_id)
        self._record_placement(session_id, group, placed.runner, epoch, now)
        self.runners.placed(placed.runner)
        out.counts["sessions_moved"] += 1
        out.counts["wakes_resent"] += len(untaken)
        log.warning(
            "runner %s is gone: session %s of %s moved to runner %s (epoch %d, %d wake(s) it had not taken re-sent)",
            gone,
            session_id,
            group,
            placed.runner,
            epoch,
            len(untaken),
            extra=logs.context(session_id, group),
        )

    def _placed(self, session_id: str, agent_group: str, placed: placement.Placement, now: float) -> None:
        """A new session went where `placed` says: counted against that runner until its next heartbeat, and a
        fallback said once."""
        self.runners.placed(placed.runner)
        self._record_placement(session_id, agent_group, placed.runner, 1, now)
        if self.runners.news(placed):  # before any heartbeat (a fresh start) that is no news to worry about
            level = logging.WARNING if self.runners.snapshot() else logging.INFO
            log.log(
                level, "placing new sessions by fallback: %s", placed.why, extra=logs.context(session_id, agent_group)
            )
        log.info("session %s of %s placed on runner %s", session_id, agent_group, placed.runner)

    def record_drop(self, event: ev.InboundMessage, user: str, reason: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO dropped_messages (key, channel, chat_id, sender_id, reason, at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET reason = excluded.reason, at = excluded.at",
            (event.key, event.route.channel, event.route.chat_id, user, reason, now),
        )

    # --- a scheduled task's run --------------------------------------------------------------------------

    def _first(self, key: str, now: float, out: Outcome) -> bool:
        """Whether the event keyed `key` comes for the first time (it is recorded in `processed` now); a
        redelivery is counted as a duplicate, and does nothing."""
        if self.conn.execute("INSERT OR IGNORE INTO processed (key, at) VALUES (?, ?)", (key, now)).rowcount:
            return True
        out.counts["duplicates"] += 1
        return False

    def wake_due(self, batch: Sequence[ev.TaskDue], now: float) -> Outcome:
        """The scheduler's due runs, each once (`processed`, keyed by the run): a wake into the task's session on
        the runner it is on now, at its epoch, as for a chat message. This step runs in turn with `move_sessions`
        (one store thread, and the service publishes under the lock a move takes), so a run is woken either
        before a move, and re-sent by it with what the old runner had not taken, or after it, on the new runner.
        A session that is no more (deleted), or of another group than the task's, wakes nothing: logged, counted,
        and the scheduler told (`TaskOrphaned`). The run goes to the session's chat as it is now."""
        out = Outcome()
        with self.transaction() as db:
            for due in batch:
                # A `.` is in no channel's name, so no inbound key (`<channel>:<message id>`) is ever this one.
                if not self._first(f"task.due:{due.key}", now, out):
                    continue
                session = db.execute(
                    "SELECT agent_group, runner, epoch, channel, chat_id, thread_id FROM sessions WHERE id = ?",
                    (due.session_id,),
                ).fetchone()
                if session is None or session["agent_group"] != due.agent_group:
                    why = "no longer exists" if session is None else f"belongs to {session['agent_group']}"
                    self._orphaned(due, f"session {due.session_id} {why}")
                    out.counts["task_runs_dropped"] += 1
                    continue
                route = self._due_route(due, session)
                runner, epoch = str(session["runner"]), int(session["epoch"])
                if why := self._unless_too_large(functools.partial(self._wake_due, due, route, runner, epoch), out):
                    self._orphaned(due, why)  # as large at every run: the scheduler pauses the task, saying why
                    out.counts["task_runs_dropped"] += 1
                    continue
                # A runner declared gone holds the run until it is back: the chat is told once, as for a message.
                self._tell_if_away(due.session_id, due.agent_group, runner, route, now)
                out.counts["task_runs"] += 1
        out.outgoing = self.outgoing()
        return out

    def _orphaned(self, due: ev.TaskDue, why: str) -> None:
        """A run whose session is no more wakes nothing: logged, and the scheduler told, which pauses the task."""
        log.warning(
            "task %s: run %s dropped: %s; the scheduler pauses the task",
            due.task_id,
            due.id,
            why,
            extra=logs.context(due.session_id, due.agent_group, due.id),
        )
        orphan = ev.TaskOrphaned(task_id=due.task_id, run_id=due.id, session_id=due.session_id, reason=why)
        self.emit(subjects.event("router", "task_orphaned"), f"router:{orphan.key}", orphan, lane=due.session_id)

    @staticmethod
    def _due_route(due: ev.TaskDue, session: sqlite3.Row) -> ev.Route:
        """Where a run's answer goes: the session's chat as it is now, not the one the task was made in. Its id may
        have changed since (`_move_chat`), and the scheduler hears of that later, on its own consumer; a task made
        from the runner's record of the chat names the old id until someone speaks there again. The runner keeps
        the wake's route as the session's own. An agent-shared session has no chat of its own: the task's route
        stands, and so does the task's thread where the session is not one thread's."""
        if session["chat_id"] == ALL_CHATS:
            return due.route
        return ev.Route(
            channel=session["channel"],
            chat_id=session["chat_id"],
            thread_id=session["thread_id"] or due.route.thread_id,
        )

    def _wake_due(self, due: ev.TaskDue, route: ev.Route, runner: str, epoch: int) -> None:
        wake = ev.Wake(
            session_id=due.session_id,
            agent_group=due.agent_group,
            route=route,
            message=ev.WakeMessage(id=due.id, kind="task", text=due.text, sent_at=due.at, script=due.script),
            destinations=self.destinations(due.agent_group),
            group=self.group_settings(due.agent_group),
            epoch=epoch,
        )
        self._emit_wake(runner, wake.key, wake, lane=due.session_id)
        log.info(
            "task %s: run %s -> session %s on runner %s (epoch %d)",
            due.task_id,
            due.id,
            due.session_id,
            runner,
            epoch,
            extra=logs.context(due.session_id, due.agent_group, due.id),
        )

    # --- agents that talk to each other -------------------------------------------------------------

    def relay_batch(self, batch: Sequence[ev.OutboundMessage], now: float) -> Outcome:
        """Agents' sends on the agent channel, each once (keyed by its outbound id, which names the sending
        row): a wake into the target group's session, or a drop with its reason; either way the sending
        session gets a receipt saying which."""
        out = Outcome()
        with self.transaction():
            for event in batch:
                key = f"{relay.AGENT}:{event.id}"
                if not self._first(key, now, out):
                    continue
                decision = relay.decide(
                    event.route,
                    self._relay_source(event),
                    destination_hops=self._agent_destination(event.agent_group, event.route.chat_id),
                    reply_to=self._reply_target(event.route.thread_id),
                )
                if isinstance(decision, relay.Drop):
                    self._drop_relay(event, key, decision.reason, now, out)
                elif why := self._unless_too_large(functools.partial(self._relay, event, key, decision, now, out), out):
                    self._drop_relay(event, key, why, now, out)
        out.outgoing = self.outgoing()
        return out

    def _relay_source(self, event: ev.OutboundMessage) -> relay.Source | None:
        row = self.conn.execute(
            "SELECT id, agent_group, channel, chat_id, thread_id, hops, hop_limit FROM sessions WHERE id = ?",
            (event.session_id,),
        ).fetchone()
        if row is None or row["agent_group"] != event.agent_group:
            return None
        return relay.Source(*row)

    def _agent_destination(self, agent_group: str, target: str) -> int | None:
        """The hop limit of `agent_group`'s destination naming the group `target`, if it has one and the
        group still exists."""
        row = self.conn.execute(
            "SELECT d.max_hops FROM destinations d JOIN agent_groups g ON g.name = d.chat_id"
            " WHERE d.agent_group = ? AND d.channel = ? AND d.chat_id = ?",
            (agent_group, relay.AGENT, target),
        ).fetchone()
        return None if row is None else int(row[0])

    def _reply_target(self, session_id: str | None) -> relay.Target | None:
        row = self.conn.execute(
            "SELECT id, agent_group, channel, chat_id, thread_id, last_route FROM sessions WHERE id = ?",
            (session_id or "",),
        ).fetchone()
        route = None if row is None else self._conversation(row)
        if row is None or route is None:
            return None
        return relay.Target(row["id"], row["agent_group"], route)

    def _relay(self, event: ev.OutboundMessage, key: str, to: relay.Deliver, now: float, out: Outcome) -> None:
        session_id, runner, epoch = self._relay_session(to, now)
        wake = ev.Wake(
            session_id=session_id,
            agent_group=to.agent_group,
            route=to.route,
            message=ev.WakeMessage(
                id=key,
                kind="chat",
                text=relay.text_of(event.kind, event.agent_group, event.text),
                sender=relay.sender(event.agent_group),
                sent_at=now,
                hops=to.hops,
            ),
            destinations=self.destinations(to.agent_group),
            group=self.group_settings(to.agent_group),
            epoch=epoch,
        )
        self._emit_wake(runner, wake.key, wake, lane=session_id)
        self._relay_receipt(event, out, error="")
        out.counts["relayed"] += 1
        log.info(
            "%s from %s -> session %s of %s (hop %d of %d)",
            key,
            event.agent_group,
            session_id,
            to.agent_group,
            to.hops,
            to.hop_limit,
            extra=logs.context(session_id, to.agent_group, key),
        )

    def _relay_session(self, to: relay.Deliver, now: float) -> tuple[str, str, int]:
        """The target session, with the relayed message's hop count: the one that asked (a reply) or the
        target group's session for the asking one (made on the first send)."""
        if to.session_id:
            row = self.conn.execute(
                "UPDATE sessions SET hops = ?, last_message_at = ? WHERE id = ? RETURNING id, runner, epoch",
                (to.hops, now, to.session_id),
            ).fetchone()
        else:
            route = to.route
            new_id, placed = f"s-{secrets.token_hex(8)}", self._place(to.agent_group, now)
            row = self.conn.execute(
                "INSERT INTO sessions (id, agent_group, channel, chat_id, thread_id, runner, created_at,"
                " last_message_at, hops, hop_limit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (agent_group, channel, chat_id, thread_id) DO UPDATE SET"
                " last_message_at = excluded.last_message_at, hops = excluded.hops, hop_limit = excluded.hop_limit"
                " RETURNING id, runner, epoch",
                (
                    new_id,
                    to.agent_group,
                    route.channel,
                    route.chat_id,
                    route.thread_id or "",
                    placed.runner,
                    now,
                    now,
                    to.hops,
                    to.hop_limit,
                ),
            ).fetchone()
            if row[0] == new_id:
                self._placed(new_id, to.agent_group, placed, now)
        return str(row[0]), str(row[1]), int(row[2])

    def _drop_relay(self, event: ev.OutboundMessage, key: str, reason: str, now: float, out: Outcome) -> None:
        self.conn.execute(
            "INSERT INTO dropped_messages (key, channel, chat_id, sender_id, reason, at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET reason = excluded.reason, at = excluded.at",
            (key, relay.AGENT, event.route.chat_id, relay.sender(event.agent_group).id, reason, now),
        )
        self._relay_receipt(event, out, error=reason)
        out.counts["relays_dropped"] += 1
        log.warning(
            "%s from %s to %s dropped: %s",
            key,
            event.agent_group,
            event.route.chat_id,
            reason,
            extra=logs.context(event.session_id, event.agent_group, key),
        )

    def _relay_receipt(self, event: ev.OutboundMessage, out: Outcome, *, error: str) -> None:
        """The sending session learns what became of its send, as from a bridge: delivered, or refused and why."""
        if not event.session_id:
            return
        receipt = ev.receipt_for(
            event, ok=not error, error=error or None, platform_message_id=None if error else f"agent:{event.id}"
        )
        self.emit(subjects.receipt(relay.AGENT), f"receipt:{event.id}", receipt, lane=f"receipt:{event.session_id}")

    # --- approvals --------------------------------------------------------------------------------

    def _hold(
        self,
        kind: Literal["sender", "channel"],
        event: ev.InboundMessage,
        mg: int,
        user: str,
        group: str,
        now: float,
        out: Outcome,
    ) -> None:
        """Keep the message until an approver decides; the first message of a sender (or chat) sends
        the request, later ones join it."""
        db = self.conn
        if kind == "sender":
            row = db.execute(
                "SELECT id FROM approvals WHERE kind = 'sender' AND user_id = ? AND agent_group = ?", (user, group)
            ).fetchone()
        else:
            row = db.execute(
                "SELECT id FROM approvals WHERE kind = 'channel' AND messaging_group = ?", (mg,)
            ).fetchone()
        if row is None:
            approval_id = f"rt-{secrets.token_hex(8)}"
            expires_at = now + APPROVAL_TTL
            if kind == "sender":
                request = cards.sender_request(approval_id, event, user, group, self.roles.approvers(group), expires_at)
            else:
                groups = tuple(r[0] for r in db.execute("SELECT name FROM agent_groups ORDER BY created_at, rowid"))
                request = cards.channel_request(
                    approval_id, event, user, groups, self.roles.approvers(None), expires_at
                )
                group = request.agent_group
            db.execute(
                "INSERT INTO approvals (id, kind, messaging_group, user_id, agent_group, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (approval_id, kind, mg, user, group, now, expires_at),
            )
            self.emit(subjects.APPROVAL_REQUEST, approval_id, request, lane=approval_id)
            out.counts["approvals_requested"] += 1
            log.info("asked for approval %s (%s %s) for %s", approval_id, kind, user, event.key)
        else:
            approval_id = row[0]
            held = db.execute("SELECT COUNT(*) FROM held_messages WHERE approval_id = ?", (approval_id,)).fetchone()
            if held[0] >= MAX_HELD:
                self.record_drop(event, user, "too many messages are already waiting for this approval", now)
                out.counts["dropped"] += 1
                return
        db.execute(
            "INSERT OR IGNORE INTO held_messages (approval_id, key, event, held_at) VALUES (?, ?, ?, ?)",
            (approval_id, event.key, ev.encode(event), now),
        )
        out.counts["held"] += 1

    def on_decision(self, decision: ev.ApprovalDecision, now: float) -> Outcome:
        out = Outcome()
        with self.transaction() as db:
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (decision.id,)).fetchone()
            if row is None:
                row = self._merged_into(decision)
            if row is None:
                self._too_late(decision, out)
            else:
                self._settle(row, decision, now, out)
        out.outgoing = self.outgoing()
        return out

    def _too_late(self, decision: ev.ApprovalDecision, out: Outcome) -> None:
        """A decision on a card of an approval the router no longer waits on: whoever approved on it is told it was
        not carried out, and why. Anything else is another service's approval, or a redelivered decision."""
        gone = self.conn.execute("SELECT * FROM withdrawn_approvals WHERE id = ?", (decision.id,)).fetchone()
        if gone is None or decision.decision not in ("approved", "answered"):
            out.counts["decisions_ignored"] += 1
            return
        log.warning(
            "approval %s: %s answered after it was withdrawn (%s)", decision.id, decision.decided_by, gone["why"]
        )
        notice = cards.not_done(decision, gone["kind"], gone["agent_group"], gone["about"], gone["why"], again=False)
        amended = cards.amendment(decision, gone["kind"], gone["agent_group"], gone["why"])
        for request in (amended, notice):
            self.emit(subjects.APPROVAL_REQUEST, request.id, request, lane=decision.id)
        out.counts["decisions_too_late"] += 1

    def _about(self, row: sqlite3.Row) -> str:
        """What an approval asks, in words."""
        chat = self._chat_name(row["messaging_group"])
        if row["kind"] == "sender":
            return f"{row['user_id']} writing to {row['agent_group']} in {chat}"
        return f"connecting {chat}"

    def withdraw(self, row: sqlite3.Row, why: str, now: float, *, answered: str = "") -> None:
        """The router no longer waits on this approval (the caller settles or deletes it): its cards (its own and
        any merged into it, but the one just `answered`) are recorded, so that a press on one still open is
        answered with `why`."""
        merged = [r[0] for r in self.conn.execute("SELECT id FROM merged_approvals WHERE into_id = ?", (row["id"],))]
        about = self._about(row)
        self.conn.executemany(
            "INSERT OR REPLACE INTO withdrawn_approvals (id, kind, agent_group, about, why, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(i, row["kind"], row["agent_group"], about, why, now) for i in (row["id"], *merged) if i != answered],
        )

    def _not_done(self, row: sqlite3.Row, decision: ev.ApprovalDecision, why: str, out: Outcome) -> None:
        """A decision the router cannot carry out: the approval waits on, with a fresh card to its approvers (the one
        pressed shows a choice and takes no more), and whoever pressed is told, in their own chat."""
        log.warning("approval %s: %s's answer not carried out (%s); asked again", row["id"], decision.decided_by, why)
        out.counts["decisions_refused"] += 1
        again = self._ask_again(row, decision, why)
        notice = cards.not_done(decision, row["kind"], row["agent_group"], self._about(row), why, again=again)
        amended = cards.amendment(decision, row["kind"], row["agent_group"], why)
        for request in (amended, notice):
            self.emit(subjects.APPROVAL_REQUEST, request.id, request, lane=row["id"])

    def _ask_again(self, row: sqlite3.Row, decision: ev.ApprovalDecision, why: str) -> bool:
        """A new card for the approval, under a new id that counts for it (`merged_approvals`); False when there is
        nothing to show on it (no message held)."""
        first = self.conn.execute(
            "SELECT event FROM held_messages WHERE approval_id = ? ORDER BY rowid LIMIT 1", (row["id"],)
        ).fetchone()
        if first is None:
            return False
        held, again = _held_decoder.decode(first[0]), cards.again_id(decision.id)
        if row["kind"] == "sender":
            group = row["agent_group"]
            request = cards.sender_request(
                again, held, row["user_id"], group, self.roles.approvers(group), row["expires_at"]
            )
        else:
            groups = tuple(r[0] for r in self.conn.execute("SELECT name FROM agent_groups ORDER BY created_at, rowid"))
            request = cards.channel_request(
                again, held, row["user_id"], groups, self.roles.approvers(None), row["expires_at"]
            )
            self.conn.execute("UPDATE approvals SET agent_group = ? WHERE id = ?", (request.agent_group, row["id"]))
        self.conn.execute("INSERT OR IGNORE INTO merged_approvals (id, into_id) VALUES (?, ?)", (again, row["id"]))
        self.emit(subjects.APPROVAL_REQUEST, again, cards.asked_again(request, decision, why), lane=row["id"])
        return True

    def _merged_into(self, decision: ev.ApprovalDecision) -> sqlite3.Row | None:
        """The approval that a card for a chat's old id was merged into (`_merge_approvals`): an approver's answer
        on it counts. Its own expiry does not: the approval it joined keeps its own time."""
        if decision.decision == "expired":
            return None
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT a.* FROM merged_approvals m JOIN approvals a ON a.id = m.into_id WHERE m.id = ?", (decision.id,)
        ).fetchone()
        return row

    def expire_approvals(self, now: float) -> Outcome:
        """Approvals nobody answered in time: their held messages are dropped, nothing is denied."""
        out = Outcome()
        with self.transaction() as db:
            for row in db.execute("SELECT * FROM approvals WHERE expires_at < ?", (now,)).fetchall():
                self._settle(row, ev.ApprovalDecision(id=row["id"], decision="expired"), now, out)
        out.outgoing = self.outgoing()
        return out

    def _settle(self, row: sqlite3.Row, decision: ev.ApprovalDecision, now: float, out: Outcome) -> None:
        held = [
            _held_decoder.decode(r[0])
            for r in self.conn.execute(
                "SELECT event FROM held_messages WHERE approval_id = ? ORDER BY rowid", (row["id"],)
            )
        ]
        if (
            decision.decision in ("approved", "answered")
            and row["kind"] == "channel"
            and decision.value == cards.NEW_AGENT
        ):
            self._ask_name(row, decision, now, out)
        elif decision.decision in ("approved", "answered"):
            self._approve(row, decision, held, now, out)
        else:
            self._drop(row, decision, held, now, out)

    def _approve(
        self, row: sqlite3.Row, decision: ev.ApprovalDecision, held: list[ev.InboundMessage], now: float, out: Outcome
    ) -> None:
        db = self.conn
        kind, mg, user = row["kind"], row["messaging_group"], row["user_id"]
        is_group = False
        group = row["agent_group"] if kind == "sender" else cards.chosen_group(decision, row["agent_group"])
        scope = group if kind == "sender" else None
        # The click is checked here too: only someone who could grant this may grant it.
        if not self.roles.may_decide(decision.decided_by, scope):
            who = f"an admin of {group}, a global admin or an owner" if scope else "a global admin or an owner"
            self._not_done(row, decision, f"only {who} may approve it", out)
            return
        if not db.execute("SELECT 1 FROM agent_groups WHERE name = ?", (group,)).fetchone():
            self._not_done(row, decision, f"there is no agent group {group} any more", out)
            return
        connected = f" (connected to {group})" if kind == "channel" else ""
        self.withdraw(row, f"{decision.decided_by} approved it already{connected}", now, answered=decision.id)
        db.execute("DELETE FROM approvals WHERE id = ?", (row["id"],))
        if kind == "channel":
            is_group = bool(db.execute("SELECT is_group FROM messaging_groups WHERE id = ?", (mg,)).fetchone()[0])
            # A group chat answers when mentioned and keeps to the thread it was pulled into;
            # members' other lines are kept as context. Unknown senders still meet the gate.
            db.execute(
                "INSERT OR IGNORE INTO wirings (messaging_group, agent_group, engage_mode, engage_pattern,"
                " sender_scope, ignored_messages, created_at) VALUES (?, ?, ?, ?, 'known', 'accumulate', ?)",
                (mg, group, "mention-sticky" if is_group else "pattern", ALWAYS, now),
            )
            db.execute("UPDATE messaging_groups SET denied_at = NULL WHERE id = ?", (mg,))
        # Approving a sender, or a direct chat (whose one other person is the sender), lets them in.
        if kind == "sender" or not is_group:
            self.add_member(user, group, decision.decided_by, now)
        log.info(
            "approval %s approved by %s: replaying %d message(s) for %s",
            row["id"],
            decision.decided_by,
            len(held),
            group,
        )
        out.counts["approved"] += 1
        for event in held:
            self._route(event, now, out, only=group)

    def _drop(
        self, row: sqlite3.Row, decision: ev.ApprovalDecision, held: list[ev.InboundMessage], now: float, out: Outcome
    ) -> None:
        """Denied or expired: the held messages are dropped, with why."""
        db = self.conn
        if decision.decision == "denied":
            self.withdraw(row, f"{decision.decided_by or 'an approver'} declined it already", now, answered=decision.id)
            if row["kind"] == "sender":
                db.execute(
                    "INSERT OR REPLACE INTO sender_denials (user_id, agent_group, denied_by, denied_at)"
                    " VALUES (?, ?, ?, ?)",
                    (row["user_id"], row["agent_group"], decision.decided_by, now),
                )
            else:
                db.execute("UPDATE messaging_groups SET denied_at = ? WHERE id = ?", (now, row["messaging_group"]))
            reason = f"an approver ({decision.decided_by or 'unknown'}) declined"
        else:  # expired: its own card too, which a press in time may still settle in the approvals service
            self.withdraw(row, "it had expired, and the messages it held were dropped", now)
            reason = "nobody answered the approval request in time"
        db.execute("DELETE FROM approvals WHERE id = ?", (row["id"],))
        out.counts[decision.decision] += 1
        for event in held:
            self.record_drop(event, user_id_of(event.route.channel, event.sender.id), reason, now)
            out.counts["dropped"] += 1

    # --- a new agent from the channel card ---------------------------------------------------------

    def _chat_name(self, mg: int) -> str:
        row = self.conn.execute("SELECT channel, chat_id, name FROM messaging_groups WHERE id = ?", (mg,)).fetchone()
        where = f"chat {row['chat_id']} on {row['channel']}"
        return f"{row['name']} ({where})" if row["name"] else where

    def _ask_name(self, row: sqlite3.Row, decision: ev.ApprovalDecision, now: float, out: Outcome) -> None:
        """ "New agent" pressed: the chat waits on, and the owner who pressed it is asked for the name."""
        if not self.roles.may_decide(decision.decided_by, None):
            self._not_done(row, decision, "only a global admin or an owner may make a new agent", out)
            return
        self.conn.execute(
            "UPDATE approvals SET naming_by = ?, naming_at = ? WHERE id = ?", (decision.decided_by, now, row["id"])
        )
        ask = cards.name_request(
            row["id"], self._chat_name(row["messaging_group"]), decision.decided_by, row["expires_at"]
        )
        self.emit(subjects.APPROVAL_REQUEST, ask.id, ask, lane=row["id"])
        out.counts["names_asked"] += 1

    def _name_agent(self, event: ev.InboundMessage, now: float, out: Outcome) -> bool:
        """`/newagent NAME` from the owner asked for a name: the group made (its starter CLAUDE.md kept with it)
        and the chat connected to it, in this one transaction. Asked for several chats' names, it names the chat
        they were asked about last, and says which still wait. False when it is not that (routed as usual)."""
        given = cards.named(event.text)
        if given is None:
            return False
        user = user_id_of(event.route.channel, event.sender.id)
        rows = self.conn.execute(
            "SELECT * FROM approvals WHERE kind = 'channel' AND naming_by = ? ORDER BY naming_at DESC, created_at DESC",
            (user,),
        ).fetchall()
        if not rows:
            return False
        row, chat = rows[0], self._chat_name(rows[0]["messaging_group"])
        if not self.roles.may_decide(user, None):  # no longer an owner or global admin since New agent was pressed
            self._reply(event, cards.NO_LONGER_MAY_NAME, 0, out, kind="error")
            return True
        folders = dict(self.conn.execute("SELECT name, folder FROM agent_groups").fetchall())
        if why := cards.name_problem(given, chat, folders):
            self._reply(event, why, 0, out, kind="error")
            return True
        name, memory = given, cards.starter_memory(given, chat)
        self.conn.execute(
            "INSERT INTO agent_groups (name, folder, created_at, changed_at, starter_memory) VALUES (?, ?, ?, ?, ?)",
            (name, name, now, now, memory),
        )
        written = self.write_memory_now(name, memory)
        connect = ev.ApprovalDecision(
            id=row["id"], decision="approved", decided_by=user, value=f"{cards.CONNECT_PREFIX}{name}", decided_at=now
        )
        self._settle(row, connect, now, out)
        waiting = [self._chat_name(r["messaging_group"]) for r in rows[1:]]
        self._reply(event, cards.created(name, chat, kept_memory=written is False, waiting=waiting), 0, out)
        out.counts["agents_created"] += 1
        log.info("agent group %s created by %s for %s", name, user, chat)
        return True

    def write_memory_now(self, folder: str, memory: str) -> bool | None:
        """A new group's CLAUDE.md at once, so the owner can open it now; the runner that starts the group's
        containers writes it from the group's settings where it is missing (this failed, or that runner is on
        another host). False: one is there, kept; None: not written here."""
        if self.groups_dir is None:
            return None
        try:
            return write_new_memory(self.groups_dir, folder, memory)
        except OSError as exc:
            log.warning("agent group %s: its CLAUDE.md not written here (%s); its runner will write it", folder, exc)
            return None

    # --- entity writes shared by routing and control ----------------------------------------------

    def _ensure_user(self, user: str, now: float) -> None:
        """A user granted something before the router ever saw them write."""
        self.conn.execute("INSERT OR IGNORE INTO users (id, created_at) VALUES (?, ?)", (user, now))

    def grant(self, user: str, role: str, agent_group: str, granted_by: str, now: float) -> bool:
        self._ensure_user(user, now)
        added = self.conn.execute(
            "INSERT OR IGNORE INTO roles (user_id, role, agent_group, granted_by, granted_at) VALUES (?, ?, ?, ?, ?)",
            (user, role, agent_group, granted_by, now),
        ).rowcount
        self.reload()
        return bool(added)

    def add_member(self, user: str, agent_group: str, added_by: str, now: float) -> bool:
        self._ensure_user(user, now)
        added = self.conn.execute(
            "INSERT OR IGNORE INTO members (user_id, agent_group, added_by, added_at) VALUES (?, ?, ?, ?)",
            (user, agent_group, added_by, now),
        ).rowcount
        # Being let in settles earlier refusals.
        self.conn.execute("DELETE FROM sender_denials WHERE user_id = ? AND agent_group = ?", (user, agent_group))
        self.conn.execute("DELETE FROM unregistered_senders WHERE user_id = ? AND agent_group = ?", (user, agent_group))
        return bool(added)

    def set_pairing(self, channel: str, digest: str, now: float, expires_at: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO pairing_codes (channel, digest, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (channel, digest, now, expires_at),
            )
        self._pairing[channel] = (digest, expires_at)

    def prune(self, now: float) -> int:
        """Forget routed keys and drop records past their use; returns how many rows went."""
        with self.transaction() as db:
            gone = db.execute("DELETE FROM processed WHERE at < ?", (now - PROCESSED_KEEP,)).rowcount
            gone += db.execute("DELETE FROM routed WHERE at < ?", (now - PROCESSED_KEEP,)).rowcount
            gone += db.execute("DELETE FROM dropped_messages WHERE at < ?", (now - DROPPED_KEEP,)).rowcount
            gone += db.execute("DELETE FROM withdrawn_approvals WHERE at < ?", (now - PROCESSED_KEEP,)).rowcount
            gone += db.execute("DELETE FROM pairing_codes WHERE expires_at < ?", (now,)).rowcount
        self._pairing = {c: v for c, v in self._pairing.items() if v[1] >= now}
        return gone
