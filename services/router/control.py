"""The router's control verbs (`clawden.ctl.router.<resource>`, payload `{"op": ...}`, declared in
`clawden.bus.ctl.router`): the CLI's view of agent groups, chats, wirings, users, roles, members,
destinations, sessions and drops."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import Verb
from clawden.bus.ctl import router as api
from clawden.bus.ctl.router import (
    AdmitInvite,
    ApproversGet,
    ChatCreate,
    ChatDelete,
    ChatList,
    ChatMove,
    ChatUpdate,
    ContainerSettings,
    DestinationAdd,
    DestinationRemove,
    DroppedList,
    GroupCreate,
    GroupDelete,
    GroupFilter,
    GroupGet,
    GroupUpdate,
    ListAll,
    MemberAdd,
    MemberRemove,
    PairCreate,
    RoleGrant,
    RoleRevoke,
    StandingGet,
    UsersUnregistered,
    WiringCreate,
    WiringDelete,
    WiringList,
    WiringUpdate,
)
from services.router import cards, pairing
from services.router.entities import ALL_CHATS, InvalidName, channel_name, group_name, pattern, user_id
from services.router.store import RouterError, RouterStore

Json = dict[str, Any]
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
T = TypeVar("T")


def _as(kind: type[T], value: object) -> T:
    """A row (or rows) as its reply Struct; the columns are the reply's fields."""
    return msgspec.convert(value, kind)


class Control:
    """Runs on the store's thread, like routing, so a change and a message never interleave."""

    def __init__(self, store: RouterStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.db = store.conn
        self.clock = clock

    def handle(self, verb: Verb[Req, Rep], request: Req) -> Rep:
        """Answer one verb (`_<resource>_<op>` does); a name the router refuses is a RouterError."""
        method: Callable[[Req], Rep] = getattr(self, f"_{verb.name}_{verb.op}")
        try:
            return method(request)
        except InvalidName as exc:
            raise RouterError(str(exc)) from None

    # --- helpers ----------------------------------------------------------------------------------

    def _group(self, name: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self.db.execute("SELECT * FROM agent_groups WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise RouterError(f"no agent group named {name!r} (see `clawden groups list`)")
        return row

    def _chat(self, channel: str, chat_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM messaging_groups WHERE channel = ? AND chat_id = ?", (channel, chat_id)
        ).fetchone()
        if row is None:
            raise RouterError(f"no chat {chat_id!r} on {channel} (see `clawden chats list`)")
        return row

    @staticmethod
    def _group_json(row: sqlite3.Row) -> Json:
        return {
            "name": row["name"],
            "folder": row["folder"],
            "assistant_name": row["assistant_name"],
            "provider": row["provider"],
            "model": row["model"],
            "container": json.loads(row["container"]),
            "created_at": row["created_at"],
            "runner": row["runner"],
        }

    # --- agent groups -----------------------------------------------------------------------------

    def _groups_list(self, req: ListAll) -> list[api.GroupListed]:
        out = []
        for row in self.db.execute(
            "SELECT g.*, (SELECT COUNT(*) FROM wirings w WHERE w.agent_group = g.name) AS chats,"
            " (SELECT COUNT(*) FROM sessions s WHERE s.agent_group = g.name) AS sessions"
            " FROM agent_groups g ORDER BY g.created_at, g.rowid LIMIT ?",
            (req.limit,),
        ):
            out.append(self._group_json(row) | {"chats": row["chats"], "sessions": row["sessions"]})
        return _as(list[api.GroupListed], out)

    def _groups_get(self, req: GroupGet) -> api.GroupDetail:
        row = self._group(req.name)
        return _as(
            api.GroupDetail,
            self._group_json(row)
            | {
                "wirings": self._wirings_list(WiringList(agent_group=req.name)),
                "members": [
                    r[0]
                    for r in self.db.execute(
                        "SELECT user_id FROM members WHERE agent_group = ? ORDER BY user_id", (req.name,)
                    )
                ],
                "admins": self.store.roles.scoped.get(req.name, []),
                "destinations": self._destinations_list(GroupFilter(agent_group=req.name)),
            },
        )

    def _groups_create(self, req: GroupCreate) -> api.Group:
        name = group_name(req.name)
        folder = _folder(req.folder or name)
        _provider(req.provider)
        _check_settings(req.model, req.container, req.assistant_name)
        pin = _runner_pin(req.runner)
        container = _set_only(msgspec.to_builtins(req.container))
        # Every group starts with a CLAUDE.md (as `/newagent` and `clawden init` give theirs): the one asked for,
        # or the starter; its runner writes it at the group's first container where the folder has none (not here:
        # the runner that asked for the group, `/newagent` approved there, writes it and says if one was kept).
        memory = req.starter_memory or cards.starter_memory(name)
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM agent_groups WHERE name = ?", (name,)).fetchone():
                raise RouterError(f"agent group {name!r} already exists")
            if db.execute("SELECT 1 FROM agent_groups WHERE folder = ?", (folder,)).fetchone():
                raise RouterError(f"folder {folder!r} already belongs to another agent group")
            now = self.clock()
            db.execute(
                "INSERT INTO agent_groups (name, folder, created_at, assistant_name, provider, model,"
                " container, changed_at, runner, starter_memory) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    folder,
                    now,
                    req.assistant_name,
                    req.provider,
                    req.model,
                    json.dumps(container),
                    now,
                    pin,
                    memory,
                ),
            )
        self.store.reload()
        return _as(api.Group, self._group_json(self._group(name)))

    def _groups_update(self, req: GroupUpdate) -> api.Group:
        if req.provider is not None:
            _provider(req.provider)
        _check_settings(req.model, req.container, req.assistant_name)
        pin = None if req.runner is None else _runner_pin(req.runner)
        with self.store.transaction() as db:
            row = self._group(req.name)
            folder = _folder(req.folder) if req.folder is not None else row["folder"]
            if (
                folder != row["folder"]
                and db.execute("SELECT 1 FROM agent_groups WHERE folder = ?", (folder,)).fetchone()
            ):
                raise RouterError(f"folder {folder!r} already belongs to another agent group")
            container = row["container"]
            if req.container is not None:
                merged = json.loads(container) | msgspec.to_builtins(req.container)
                container = json.dumps(_set_only(merged))
            # The next wake carries the new settings to the runner, stamped so a late older one loses.
            db.execute(
                "UPDATE agent_groups SET folder = ?, assistant_name = ?, provider = ?, model = ?, container = ?,"
                " changed_at = ?, runner = ? WHERE name = ?",
                (
                    folder,
                    _or(req.assistant_name, row["assistant_name"]),
                    _or(req.provider, row["provider"]),
                    _or(req.model, row["model"]),
                    container,
                    self.clock(),
                    _or(pin, row["runner"]),
                    req.name,
                ),
            )
        self.store.reload()
        return _as(api.Group, self._group_json(self._group(req.name)))

    def _groups_delete(self, req: GroupDelete) -> api.GroupDeleted:
        with self.store.transaction() as db:
            self._group(req.name)
            held = db.execute("SELECT * FROM approvals WHERE agent_group = ? AND kind = 'sender'", (req.name,))
            for approval in held.fetchall():
                self.store.withdraw(approval, f"agent group {req.name} was deleted", self.clock())
            counts = {
                "sessions": db.execute("DELETE FROM sessions WHERE agent_group = ?", (req.name,)).rowcount,
                "approvals": db.execute(
                    "DELETE FROM approvals WHERE agent_group = ? AND kind = 'sender'", (req.name,)
                ).rowcount,
                "roles": db.execute("DELETE FROM roles WHERE agent_group = ?", (req.name,)).rowcount,
                "wirings": db.execute("DELETE FROM wirings WHERE agent_group = ?", (req.name,)).rowcount,
            }
            db.execute("DELETE FROM agent_groups WHERE name = ?", (req.name,))
        self.store.reload()
        return api.GroupDeleted(deleted=req.name, **counts)

    # --- chats (messaging groups) -----------------------------------------------------------------

    def _chats_list(self, req: ChatList) -> list[api.Chat]:
        wired: dict[int, list[str]] = {}
        for mg, group in self.db.execute("SELECT messaging_group, agent_group FROM wirings ORDER BY agent_group"):
            wired.setdefault(mg, []).append(group)
        query = "SELECT * FROM messaging_groups"
        args: tuple[str, ...] = ()
        if req.channel:
            query += " WHERE channel = ?"
            args = (req.channel,)
        return [
            self._chat_json(row, wired.get(row["id"], []))
            for row in self.db.execute(query + " ORDER BY channel, chat_id", args)
        ]

    @staticmethod
    def _chat_json(row: sqlite3.Row, wired: list[str]) -> api.Chat:
        return _as(
            api.Chat,
            {
                "channel": row["channel"],
                "chat_id": row["chat_id"],
                "name": row["name"],
                "is_group": bool(row["is_group"]),
                "policy": row["unknown_sender_policy"] or "inherit",
                "denied": row["denied_at"] is not None,
                "wired": wired,
                "created_at": row["created_at"],
            },
        )

    def _chats_create(self, req: ChatCreate) -> api.Chat:
        channel_name(req.channel)
        _chat_id(req.chat_id)
        with self.store.transaction() as db:
            if db.execute(
                "SELECT 1 FROM messaging_groups WHERE channel = ? AND chat_id = ?", (req.channel, req.chat_id)
            ).fetchone():
                raise RouterError(f"chat {req.chat_id!r} on {req.channel} already exists")
            db.execute(
                "INSERT INTO messaging_groups (channel, chat_id, name, is_group, unknown_sender_policy,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (req.channel, req.chat_id, req.name, int(req.is_group), req.policy, self.clock()),
            )
        return self._chat_json(self._chat(req.channel, req.chat_id), [])

    def _chats_update(self, req: ChatUpdate) -> api.Chat:
        with self.store.transaction() as db:
            row = self._chat(req.channel, req.chat_id)
            db.execute(
                "UPDATE messaging_groups SET name = ?, is_group = ?, unknown_sender_policy = ?,"
                " denied_at = ? WHERE id = ?",
                (
                    _or(req.name, row["name"]),
                    int(_or(req.is_group, bool(row["is_group"]))),
                    _or(req.policy, row["unknown_sender_policy"]),
                    None if req.allow else row["denied_at"],
                    row["id"],
                ),
            )
        wired = [
            r[0] for r in self.db.execute("SELECT agent_group FROM wirings WHERE messaging_group = ?", (row["id"],))
        ]
        return self._chat_json(self._chat(req.channel, req.chat_id), wired)

    def _chats_delete(self, req: ChatDelete) -> api.ChatDeleted:
        with self.store.transaction() as db:
            row = self._chat(req.channel, req.chat_id)
            for approval in db.execute("SELECT * FROM approvals WHERE messaging_group = ?", (row["id"],)).fetchall():
                self.store.withdraw(approval, "the chat was deleted", self.clock())
            wirings = db.execute("DELETE FROM wirings WHERE messaging_group = ?", (row["id"],)).rowcount
            db.execute("DELETE FROM messaging_groups WHERE id = ?", (row["id"],))
        return api.ChatDeleted(deleted=f"{req.channel}:{req.chat_id}", wirings=wirings)

    def _chats_move(self, req: ChatMove) -> api.Chat:
        channel_name(req.channel)
        _chat_id(req.new_chat_id)
        self._chat(req.channel, req.chat_id)
        outcome = self.store.move_chat(
            ev.ChatMoved(
                channel=req.channel, old_chat_id=req.chat_id, new_chat_id=req.new_chat_id, sent_at=self.clock()
            )
        )
        if not outcome.counts["chats_moved"]:
            raise RouterError(f"chat {req.chat_id!r} on {req.channel} cannot move to {req.new_chat_id!r}")
        wired = [
            r[0]
            for r in self.db.execute(
                "SELECT w.agent_group FROM wirings w JOIN messaging_groups m ON m.id = w.messaging_group"
                " WHERE m.channel = ? AND m.chat_id = ?",
                (req.channel, req.new_chat_id),
            )
        ]
        return self._chat_json(self._chat(req.channel, req.new_chat_id), wired)

    # --- wirings ----------------------------------------------------------------------------------

    def _wirings_list(self, req: WiringList) -> list[api.Wiring]:
        query = (
            "SELECT m.channel, m.chat_id, m.name AS chat_name, w.* FROM wirings w"
            " JOIN messaging_groups m ON m.id = w.messaging_group WHERE 1"
        )
        args: list[str] = []
        for column, value in (
            ("m.channel", req.channel),
            ("m.chat_id", req.chat_id),
            ("w.agent_group", req.agent_group),
        ):
            if value:
                query += f" AND {column} = ?"
                args.append(value)
        rows = [
            {
                "channel": r["channel"],
                "chat_id": r["chat_id"],
                "chat_name": r["chat_name"],
                "agent_group": r["agent_group"],
                "engage_mode": r["engage_mode"],
                "engage_pattern": r["engage_pattern"],
                "sender_scope": r["sender_scope"],
                "ignored_messages": r["ignored_messages"],
                "session_mode": r["session_mode"],
                "priority": r["priority"],
            }
            for r in self.db.execute(query + " ORDER BY m.channel, m.chat_id, w.priority DESC, w.agent_group", args)
        ]
        return _as(list[api.Wiring], rows)

    def _wirings_create(self, req: WiringCreate) -> api.Wiring:
        channel_name(req.channel)
        _chat_id(req.chat_id)
        pattern(req.engage_pattern)
        with self.store.transaction() as db:
            self._group(req.agent_group)
            row = db.execute(
                "SELECT id, is_group FROM messaging_groups WHERE channel = ? AND chat_id = ?",
                (req.channel, req.chat_id),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO messaging_groups (channel, chat_id, unknown_sender_policy, created_at)"
                    " VALUES (?, ?, 'request_approval', ?)",
                    (req.channel, req.chat_id, self.clock()),
                )
                row = self._chat(req.channel, req.chat_id)
            if db.execute(
                "SELECT 1 FROM wirings WHERE messaging_group = ? AND agent_group = ?", (row["id"], req.agent_group)
            ).fetchone():
                raise RouterError(
                    f"{req.agent_group} is already wired to {req.chat_id!r} on {req.channel}"
                    " (change it with `clawden wire update`)"
                )
            mode = req.engage_mode or ("mention" if row["is_group"] else "pattern")
            db.execute(
                "INSERT INTO wirings (messaging_group, agent_group, engage_mode, engage_pattern, sender_scope,"
                " ignored_messages, session_mode, priority, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row["id"],
                    req.agent_group,
                    mode,
                    req.engage_pattern,
                    req.sender_scope,
                    req.ignored_messages,
                    req.session_mode,
                    req.priority,
                    self.clock(),
                ),
            )
        return self._one_wiring(req.channel, req.chat_id, req.agent_group)

    def _one_wiring(self, channel: str, chat_id: str, group: str) -> api.Wiring:
        found = self._wirings_list(WiringList(channel=channel, chat_id=chat_id, agent_group=group))
        if not found:
            raise RouterError(f"{group} is not wired to {chat_id!r} on {channel}")
        return found[0]

    def _wirings_update(self, req: WiringUpdate) -> api.Wiring:
        current = self._one_wiring(req.channel, req.chat_id, req.agent_group)
        if req.engage_pattern is not None:
            pattern(req.engage_pattern)
        with self.store.transaction() as db:
            mg = self._chat(req.channel, req.chat_id)["id"]
            db.execute(
                "UPDATE wirings SET engage_mode = ?, engage_pattern = ?, sender_scope = ?, ignored_messages = ?,"
                " session_mode = ?, priority = ? WHERE messaging_group = ? AND agent_group = ?",
                (
                    _or(req.engage_mode, current.engage_mode),
                    _or(req.engage_pattern, current.engage_pattern),
                    _or(req.sender_scope, current.sender_scope),
                    _or(req.ignored_messages, current.ignored_messages),
                    _or(req.session_mode, current.session_mode),
                    _or(req.priority, current.priority),
                    mg,
                    req.agent_group,
                ),
            )
        return self._one_wiring(req.channel, req.chat_id, req.agent_group)

    def _wirings_delete(self, req: WiringDelete) -> api.Unwired:
        self._one_wiring(req.channel, req.chat_id, req.agent_group)
        with self.store.transaction() as db:
            mg = self._chat(req.channel, req.chat_id)["id"]
            db.execute("DELETE FROM wirings WHERE messaging_group = ? AND agent_group = ?", (mg, req.agent_group))
        return api.Unwired(unwired=req.agent_group, channel=req.channel, chat_id=req.chat_id)

    # --- users, roles, members --------------------------------------------------------------------

    def _users_list(self, req: ListAll) -> list[api.User]:
        members: dict[str, list[str]] = {}
        for user, group in self.db.execute("SELECT user_id, agent_group FROM members ORDER BY agent_group"):
            members.setdefault(user, []).append(group)
        roles: dict[str, list[str]] = {}
        for row in self.db.execute("SELECT user_id, role, agent_group FROM roles ORDER BY granted_at"):
            roles.setdefault(row["user_id"], []).append(
                f"{row['role']}:{row['agent_group']}" if row["agent_group"] else row["role"]
            )
        rows = [
            {
                "id": r["id"],
                "display_name": r["display_name"],
                "roles": roles.get(r["id"], []),
                "member_of": members.get(r["id"], []),
                "last_seen": r["last_seen"],
            }
            for r in self.db.execute("SELECT * FROM users ORDER BY last_seen DESC NULLS LAST, id LIMIT ?", (req.limit,))
        ]
        return _as(list[api.User], rows)

    def _users_unregistered(self, req: UsersUnregistered) -> list[api.Unregistered]:
        return _as(
            list[api.Unregistered],
            [
                dict(r)
                for r in self.db.execute(
                    "SELECT u.user_id, u.name, m.channel, m.chat_id, u.agent_group, u.reason, u.message_count,"
                    " u.first_seen, u.last_seen FROM unregistered_senders u"
                    " JOIN messaging_groups m ON m.id = u.messaging_group ORDER BY u.last_seen DESC LIMIT ?",
                    (req.limit,),
                )
            ],
        )

    def _roles_list(self, req: ListAll) -> list[api.Role]:
        return _as(
            list[api.Role],
            [
                dict(r)
                for r in self.db.execute(
                    "SELECT user_id, role, agent_group, granted_by, granted_at FROM roles"
                    " ORDER BY role DESC, granted_at LIMIT ?",
                    (req.limit,),
                )
            ],
        )

    def _roles_grant(self, req: RoleGrant) -> api.RoleGranted:
        user_id(req.user_id)
        if req.role == "owner" and req.agent_group:
            raise RouterError("an owner is always global; grant admin to scope a role to one agent group")
        with self.store.transaction():
            if req.agent_group:
                self._group(req.agent_group)
            added = self.store.grant(req.user_id, req.role, req.agent_group, req.granted_by, self.clock())
        return api.RoleGranted(user_id=req.user_id, role=req.role, agent_group=req.agent_group, changed=added)

    def _roles_revoke(self, req: RoleRevoke) -> api.RoleRevoked:
        with self.store.transaction() as db:
            gone = db.execute(
                "DELETE FROM roles WHERE user_id = ? AND role = ? AND agent_group = ?",
                (req.user_id, req.role, req.agent_group),
            ).rowcount
        self.store.reload()
        if not gone:
            scope = f" of {req.agent_group}" if req.agent_group else ""
            raise RouterError(f"{req.user_id} is not {req.role}{scope}")
        return api.RoleRevoked(user_id=req.user_id, role=req.role, agent_group=req.agent_group, revoked=True)

    def _standing_get(self, req: StandingGet) -> api.Standing:
        roles = self.store.roles
        owner, admin, groups = roles.standing(req.user_id)
        first = roles.owners[0] if roles.owners else ""
        return api.Standing(
            user_id=req.user_id, owner=owner, admin=admin, agent_groups=sorted(groups), first_owner=first
        )

    def _members_list(self, req: GroupFilter) -> list[api.Member]:
        query = "SELECT user_id, agent_group, added_by, added_at FROM members"
        args: tuple[str, ...] = ()
        if req.agent_group:
            query += " WHERE agent_group = ?"
            args = (req.agent_group,)
        return _as(list[api.Member], [dict(r) for r in self.db.execute(query + " ORDER BY agent_group, user_id", args)])

    def _members_add(self, req: MemberAdd) -> api.MemberAdded:
        user_id(req.user_id)
        with self.store.transaction():
            self._group(req.agent_group)
            added = self.store.add_member(req.user_id, req.agent_group, req.added_by, self.clock())
        return api.MemberAdded(user_id=req.user_id, agent_group=req.agent_group, changed=added)

    def _members_remove(self, req: MemberRemove) -> api.MemberRemoved:
        with self.store.transaction() as db:
            gone = db.execute(
                "DELETE FROM members WHERE user_id = ? AND agent_group = ?", (req.user_id, req.agent_group)
            ).rowcount
        if not gone:
            raise RouterError(f"{req.user_id} is not a member of {req.agent_group}")
        return api.MemberRemoved(user_id=req.user_id, agent_group=req.agent_group, removed=True)

    # --- destinations -----------------------------------------------------------------------------

    def _destinations_list(self, req: GroupFilter) -> list[api.Destination]:
        query = "SELECT agent_group, name, display_name, channel, chat_id, thread_id, max_hops FROM destinations"
        args: tuple[str, ...] = ()
        if req.agent_group:
            query += " WHERE agent_group = ?"
            args = (req.agent_group,)
        return _as(
            list[api.Destination], [dict(r) for r in self.db.execute(query + " ORDER BY agent_group, name", args)]
        )

    def _destinations_add(self, req: DestinationAdd) -> api.Destination:
        group_name(req.name)
        channel_name(req.channel)
        _chat_id(req.chat_id)
        _agent_destination(req)
        with self.store.transaction() as db:
            self._group(req.agent_group)
            if req.channel == ev.AGENT_CHANNEL:
                self._group(req.chat_id)
            if db.execute(
                "SELECT 1 FROM destinations WHERE agent_group = ? AND name = ?", (req.agent_group, req.name)
            ).fetchone():
                raise RouterError(f"{req.agent_group} already has a destination named {req.name!r}")
            db.execute(
                "INSERT INTO destinations (agent_group, name, display_name, channel, chat_id, thread_id,"
                " max_hops, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    req.agent_group,
                    req.name,
                    req.display_name,
                    req.channel,
                    req.chat_id,
                    req.thread_id,
                    req.max_hops,
                    self.clock(),
                ),
            )
        self.store.reload()
        return api.Destination(
            agent_group=req.agent_group,
            name=req.name,
            display_name=req.display_name,
            channel=req.channel,
            chat_id=req.chat_id,
            thread_id=req.thread_id,
            max_hops=req.max_hops,
        )

    def _destinations_remove(self, req: DestinationRemove) -> api.DestinationRemoved:
        with self.store.transaction() as db:
            gone = db.execute(
                "DELETE FROM destinations WHERE agent_group = ? AND name = ?", (req.agent_group, req.name)
            ).rowcount
        self.store.reload()
        if not gone:
            raise RouterError(f"{req.agent_group} has no destination named {req.name!r}")
        return api.DestinationRemoved(agent_group=req.agent_group, name=req.name, removed=True)

    # --- sessions, drops, pairing, approvals ------------------------------------------------------

    def _sessions_list(self, req: GroupFilter) -> list[api.Session]:
        query = "SELECT id, agent_group, channel, chat_id, thread_id, runner, created_at, last_message_at FROM sessions"
        args: tuple[str | int, ...] = (req.limit,)
        if req.agent_group:
            query += " WHERE agent_group = ?"
            args = (req.agent_group, req.limit)
        return _as(
            list[api.Session],
            [dict(r) for r in self.db.execute(query + " ORDER BY last_message_at DESC LIMIT ?", args)],
        )

    def _dropped_list(self, req: DroppedList) -> list[api.Dropped]:
        query = "SELECT key, channel, chat_id, sender_id, reason, at FROM dropped_messages"
        args: tuple[str | int, ...] = (req.limit,)
        if req.channel:
            query += " WHERE channel = ?"
            args = (req.channel, req.limit)
        return _as(list[api.Dropped], [dict(r) for r in self.db.execute(query + " ORDER BY at DESC LIMIT ?", args)])

    def _admit_invite(self, req: AdmitInvite) -> api.Admission:
        """Join on an invite as the chat's unknown-sender policy would let the inviter's messages through: a known
        user (owner, admin, member) always; anyone under `public` or `request_approval` (an approver is asked when
        they write); under `strict`, or into a chat the owner denied, nobody else. A refusal is a dropped message."""
        channel_name(req.channel)
        user = req.user_id if req.user_id.startswith(f"{req.channel}:") else f"{req.channel}:{req.user_id}"
        owner, admin, admin_of = self.store.roles.standing(user)
        if owner or admin or admin_of or self.db.execute("SELECT 1 FROM members WHERE user_id = ?", (user,)).fetchone():
            return api.Admission(allowed=True, reason="a known user")
        rows = {
            r["chat_id"]: r
            for r in self.db.execute(
                "SELECT chat_id, unknown_sender_policy, denied_at FROM messaging_groups"
                " WHERE channel = ? AND chat_id IN (?, '*')",
                (req.channel, req.chat_id),
            )
        }
        own, wildcard = rows.get(req.chat_id), rows.get("*")
        policy = next(
            (r["unknown_sender_policy"] for r in (own, wildcard) if r is not None and r["unknown_sender_policy"]),
            "request_approval",
        )
        reason = ""
        if own is not None and own["denied_at"] is not None:
            reason = "invited into a chat the owner denied"
        elif policy == "strict":
            reason = "invited by an unknown user (strict chat)"
        if not reason:
            return api.Admission(allowed=True, reason=f"unknown user, {policy} chat")
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO dropped_messages (key, channel, chat_id, sender_id, reason, at) VALUES"
                " (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET reason = excluded.reason, at = excluded.at",
                (f"{req.channel}:invite:{req.chat_id}", req.channel, req.chat_id, user, reason, self.clock()),
            )
        return api.Admission(allowed=False, reason=reason)

    def _pair_create(self, req: PairCreate) -> api.Pairing:
        channel_name(req.channel)
        code = pairing.new_code()
        now = self.clock()
        self.store.set_pairing(req.channel, pairing.digest(code), now, now + pairing.TTL)
        return api.Pairing(channel=req.channel, code=code, expires_at=now + pairing.TTL)

    def _approvers_get(self, req: ApproversGet) -> api.Approvers:
        return api.Approvers(
            agent_group=req.agent_group, approvers=list(self.store.roles.approvers(req.agent_group or None))
        )

    def _approvals_list(self, req: ListAll) -> list[api.HeldApproval]:
        return _as(
            list[api.HeldApproval],
            [
                dict(r)
                for r in self.db.execute(
                    "SELECT a.id, a.kind, m.channel, m.chat_id, a.user_id, a.agent_group, a.created_at, a.expires_at,"
                    " (SELECT COUNT(*) FROM held_messages h WHERE h.approval_id = a.id) AS held FROM approvals a"
                    " JOIN messaging_groups m ON m.id = a.messaging_group ORDER BY a.created_at LIMIT ?",
                    (req.limit,),
                )
            ],
        )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


PROVIDERS = ("claude",)  # agent providers the runner's image can run


def _provider(value: str) -> str:
    if value not in PROVIDERS:
        raise RouterError(f"provider {value!r}: only {', '.join(map(repr, PROVIDERS))} is available")
    return value


def _folder(value: str) -> str:
    folder = group_name(value)
    if folder in ev.RESERVED_FOLDERS:
        raise RouterError(
            f"folder {folder!r} is the memory every agent group shares read-only; give another with --folder"
        )
    return folder


def _check_settings(model: str | None, container: ContainerSettings | None, assistant_name: str | None = None) -> None:
    """What the runner would refuse is refused here, where the person who typed it can fix it."""
    given = msgspec.to_builtins(container) if container is not None else {}
    skills = given.pop("skills", "all")
    problems = ev.GroupSettings(
        model=model or "",
        assistant_name=assistant_name or "",
        skills=None if skills == "all" else tuple(skills),
        mcp=(container.mcp if container is not None else None) or {},
        **{k: v for k, v in given.items() if k != "mcp"},
    ).problems()
    if problems:
        raise RouterError("; ".join(problems.values()))


def _runner_pin(value: str) -> str:
    """A group's runner pin: a runner id (`[runner] id`, a subject token) or "" for any runner."""
    try:
        return subjects.token(value) if value else ""
    except ValueError:
        raise RouterError(
            f'runner {value!r}: give a runner\'s id (letters, digits, - and _, at most 64), or "" for any runner'
        ) from None


def _set_only(container: Json) -> Json:
    """Container settings without the cleared ones ("" or 0, and skills "all"): the runner's apply to those.
    A skill list keeps its first order, once each; an empty one means no skills."""
    out = {k: v for k, v in container.items() if v not in ("", 0, None) and not (k == "skills" and v == "all")}
    if isinstance(out.get("skills"), list):
        out["skills"] = list(dict.fromkeys(out["skills"]))
    return out


def _chat_id(value: str) -> str:
    if not value or len(value) > 256 or value != value.strip():
        raise InvalidName(f"chat id {value!r}: give the platform's chat id, or {ALL_CHATS!r} for every chat")
    return value


MAX_HOPS_RANGE = (1, 32)


def _agent_destination(req: DestinationAdd) -> None:
    """A destination on the agent channel names an agent group, with no thread; a hop limit is for it alone."""
    if req.channel != ev.AGENT_CHANNEL:
        if req.max_hops:
            raise InvalidName("a hop limit is for a destination that is an agent group (--agent)")
        return
    if req.thread_id is not None:
        raise InvalidName("a destination that is an agent group has no thread")
    low, high = MAX_HOPS_RANGE
    if req.max_hops and not low <= req.max_hops <= high:
        raise InvalidName(f"max hops {req.max_hops}: give a number from {low} to {high}")
    group_name(req.chat_id)
