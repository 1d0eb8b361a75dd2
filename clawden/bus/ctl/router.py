"""The router's control verbs (`clawden.ctl.router.<resource>`, `{"op": ...}`): agent groups, chats, wirings,
users, roles, members, destinations, sessions, drops, invites, pairing and approvers."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from clawden.bus.ctl.verb import Op, Reply, declare
from clawden.mcpservers import McpServer

SERVICE = "router"

EngageMode = Literal["pattern", "mention", "mention-sticky"]
SenderScope = Literal["all", "known"]
IgnoredPolicy = Literal["drop", "accumulate"]
SessionMode = Literal["shared", "per-thread", "agent-shared"]
UnknownSenderPolicy = Literal["strict", "request_approval", "public"]
CliScope = Literal["disabled", "group", "global"]
RoleName = Literal["owner", "admin"]
ALWAYS = "."  # the engage pattern that takes every message, attachments-only ones included
# A group's starter CLAUDE.md, at most (characters): it travels with every wake of the group (GroupSettings).
MAX_STARTER_MEMORY = 32 * 1024


class ContainerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Per-group overrides of config.toml (`[groups.<name>]`, then `[runner]`), sent to the runner with
    every wake. "" or 0 clears one, so the runner's own setting applies again."""

    image: str | None = None
    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None
    idle_timeout: float | None = None
    max_turns: int | None = None
    turn_budget: float | None = None
    # What the agent may run of this CLI from its container (`clawden` there; services/runner/scope.py):
    # nothing, its own group's (the default), or everything but secrets.
    cli_scope: CliScope | None = None
    effort: str | None = None  # low, medium, high, xhigh, max
    max_messages_per_prompt: int | None = None
    skills: Literal["all"] | list[str] | None = None  # "all" (the default): every skill on the host
    mcp: dict[str, McpServer] | None = None  # the group's MCP servers, all of them ({}: none)


# --- requests --------------------------------------------------------------------------------------


class ListAll(Op, tag="list", frozen=True):
    limit: int = 200


class GroupGet(Op, tag="get", frozen=True):
    name: str


class GroupCreate(Op, tag="create", frozen=True):
    name: str
    folder: str = ""
    assistant_name: str = ""
    provider: str = "claude"
    model: str = ""
    container: ContainerSettings = ContainerSettings()
    runner: str = ""  # the runner its new sessions go to ("": the least loaded live one)
    # Its CLAUDE.md as made (create_agent: the agent's instructions): the router keeps it and sends it with the
    # group's settings, and a runner writes it into the group's folder where that has none.
    starter_memory: Annotated[str, msgspec.Meta(max_length=MAX_STARTER_MEMORY)] = ""


class GroupUpdate(Op, tag="update", frozen=True):
    name: str
    folder: str | None = None
    assistant_name: str | None = None
    provider: str | None = None
    model: str | None = None
    container: ContainerSettings | None = None
    runner: str | None = None  # "" unpins


class GroupDelete(Op, tag="delete", frozen=True):
    name: str


class ChatList(Op, tag="list", frozen=True):
    channel: str = ""


class ChatCreate(Op, tag="create", frozen=True):
    channel: str
    chat_id: str
    name: str = ""
    is_group: bool = False
    policy: UnknownSenderPolicy = "request_approval"


class ChatUpdate(Op, tag="update", frozen=True):
    channel: str
    chat_id: str
    name: str | None = None
    is_group: bool | None = None
    policy: UnknownSenderPolicy | None = None
    allow: bool = False  # forget that the owner declined the chat


class ChatDelete(Op, tag="delete", frozen=True):
    channel: str
    chat_id: str


class ChatMove(Op, tag="move", frozen=True):
    """The platform gave the chat a new id: its wirings, sessions and held approvals follow (bridges
    announce this on their inbound subject as `ChatMoved`; this is the same move asked for by hand)."""

    channel: str
    chat_id: str
    new_chat_id: str


class WiringList(Op, tag="list", frozen=True):
    channel: str = ""
    chat_id: str = ""
    agent_group: str = ""


class WiringCreate(Op, tag="create", frozen=True):
    channel: str
    chat_id: str
    agent_group: str
    engage_mode: EngageMode | None = None  # default: every message of a direct chat, mentions in a group
    engage_pattern: str = ALWAYS
    sender_scope: SenderScope = "all"
    ignored_messages: IgnoredPolicy = "drop"
    session_mode: SessionMode = "shared"
    priority: int = 0


class WiringUpdate(Op, tag="update", frozen=True):
    channel: str
    chat_id: str
    agent_group: str
    engage_mode: EngageMode | None = None
    engage_pattern: str | None = None
    sender_scope: SenderScope | None = None
    ignored_messages: IgnoredPolicy | None = None
    session_mode: SessionMode | None = None
    priority: int | None = None


class WiringDelete(Op, tag="delete", frozen=True):
    channel: str
    chat_id: str
    agent_group: str


class UsersUnregistered(Op, tag="unregistered", frozen=True):
    limit: int = 200


class RoleGrant(Op, tag="grant", frozen=True):
    user_id: str
    role: RoleName
    agent_group: str = ""
    granted_by: str = "cli"


class RoleRevoke(Op, tag="revoke", frozen=True):
    user_id: str
    role: RoleName
    agent_group: str = ""


class StandingGet(Op, tag="get", frozen=True):
    """What one person may administer, read-only: a subject of its own, so an identity that must know who is
    signed in (the web) need not be allowed the `roles` subject, where grants and revokes are made."""

    user_id: str = ""  # none: only the install's first owner is asked for


class GroupFilter(Op, tag="list", frozen=True):
    agent_group: str = ""
    limit: int = 200


class MemberAdd(Op, tag="add", frozen=True):
    agent_group: str
    user_id: str
    added_by: str = "cli"


class MemberRemove(Op, tag="remove", frozen=True):
    agent_group: str
    user_id: str


class DestinationAdd(Op, tag="add", frozen=True):
    agent_group: str
    name: str
    channel: str
    chat_id: str
    thread_id: str | None = None
    display_name: str = ""
    # On the agent channel (`chat_id` an agent group): sends in a row before the router drops one (0: 4).
    max_hops: int = 0


class DestinationRemove(Op, tag="remove", frozen=True):
    agent_group: str
    name: str


class DroppedList(Op, tag="list", frozen=True):
    channel: str = ""
    limit: int = 100


class AdmitInvite(Op, tag="invite", frozen=True):
    """A bridge asks before it joins a chat it was invited to (a Matrix room): may this inviter bring it in?"""

    channel: str
    chat_id: str
    user_id: str  # the inviter, `<channel>:<handle>`


class PairCreate(Op, tag="create", frozen=True):
    channel: str


class ApproversGet(Op, tag="get", frozen=True):
    agent_group: str = ""


# --- replies ---------------------------------------------------------------------------------------


class Wiring(Reply, frozen=True):
    channel: str
    chat_id: str
    chat_name: str
    agent_group: str
    engage_mode: EngageMode
    engage_pattern: str
    sender_scope: SenderScope
    ignored_messages: IgnoredPolicy
    session_mode: SessionMode
    priority: int


class Destination(Reply, frozen=True):
    agent_group: str
    name: str
    display_name: str
    channel: str
    chat_id: str
    thread_id: str | None
    max_hops: int = 0


class Group(Reply, frozen=True, kw_only=True):
    name: str
    folder: str
    assistant_name: str
    provider: str
    model: str
    container: ContainerSettings
    created_at: float
    runner: str = ""  # its pin: the runner its new sessions go to ("": any)


class GroupListed(Group, frozen=True):
    chats: int
    sessions: int


class GroupDetail(Group, frozen=True):
    wirings: list[Wiring]
    members: list[str]
    admins: list[str]
    destinations: list[Destination]


class GroupDeleted(Reply, frozen=True):
    deleted: str
    sessions: int
    approvals: int
    roles: int
    wirings: int


class Chat(Reply, frozen=True):
    channel: str
    chat_id: str
    name: str
    is_group: bool
    policy: UnknownSenderPolicy | Literal["inherit"]
    denied: bool
    wired: list[str]
    created_at: float


class ChatDeleted(Reply, frozen=True):
    deleted: str  # `<channel>:<chat id>`
    wirings: int


class Unwired(Reply, frozen=True):
    unwired: str  # the agent group
    channel: str
    chat_id: str


class User(Reply, frozen=True):
    id: str
    display_name: str
    roles: list[str]  # `owner`, `admin`, or `admin:<group>`
    member_of: list[str]
    last_seen: float | None


class Unregistered(Reply, frozen=True):
    user_id: str
    name: str
    channel: str
    chat_id: str
    agent_group: str
    reason: str
    message_count: int
    first_seen: float
    last_seen: float


class Role(Reply, frozen=True):
    user_id: str
    role: RoleName
    agent_group: str
    granted_by: str
    granted_at: float


class RoleGranted(Reply, frozen=True):
    user_id: str
    role: RoleName
    agent_group: str
    changed: bool


class RoleRevoked(Reply, frozen=True):
    user_id: str
    role: RoleName
    agent_group: str
    revoked: bool


class Standing(Reply, frozen=True):
    user_id: str
    owner: bool
    admin: bool  # of every agent group
    agent_groups: list[str]  # the groups they are an admin of, by name
    first_owner: str  # the install's first owner ("" before one is paired)


class Member(Reply, frozen=True):
    user_id: str
    agent_group: str
    added_by: str
    added_at: float


class MemberAdded(Reply, frozen=True):
    user_id: str
    agent_group: str
    changed: bool


class MemberRemoved(Reply, frozen=True):
    user_id: str
    agent_group: str
    removed: bool


class DestinationRemoved(Reply, frozen=True):
    agent_group: str
    name: str
    removed: bool


class Session(Reply, frozen=True):
    id: str
    agent_group: str
    channel: str
    chat_id: str
    thread_id: str
    runner: str
    created_at: float
    last_message_at: float


class Dropped(Reply, frozen=True):
    key: str
    channel: str
    chat_id: str
    sender_id: str
    reason: str
    at: float


class Admission(Reply, frozen=True):
    allowed: bool
    reason: str = ""


class Pairing(Reply, frozen=True):
    channel: str
    code: str
    expires_at: float


class Approvers(Reply, frozen=True):
    agent_group: str
    approvers: list[str]


class HeldApproval(Reply, frozen=True):
    """A sender or chat waiting for an approver; `held` messages wait with it."""

    id: str
    kind: Literal["sender", "channel"]
    channel: str
    chat_id: str
    user_id: str
    agent_group: str
    created_at: float
    expires_at: float
    held: int


# --- the verbs -------------------------------------------------------------------------------------

GROUPS_LIST = declare(SERVICE, "groups", ListAll, list[GroupListed])
GROUPS_GET = declare(SERVICE, "groups", GroupGet, GroupDetail)
GROUPS_CREATE = declare(SERVICE, "groups", GroupCreate, Group)
GROUPS_UPDATE = declare(SERVICE, "groups", GroupUpdate, Group)
GROUPS_DELETE = declare(SERVICE, "groups", GroupDelete, GroupDeleted)
CHATS_LIST = declare(SERVICE, "chats", ChatList, list[Chat])
CHATS_CREATE = declare(SERVICE, "chats", ChatCreate, Chat)
CHATS_UPDATE = declare(SERVICE, "chats", ChatUpdate, Chat)
CHATS_DELETE = declare(SERVICE, "chats", ChatDelete, ChatDeleted)
CHATS_MOVE = declare(SERVICE, "chats", ChatMove, Chat)
WIRINGS_LIST = declare(SERVICE, "wirings", WiringList, list[Wiring])
WIRINGS_CREATE = declare(SERVICE, "wirings", WiringCreate, Wiring)
WIRINGS_UPDATE = declare(SERVICE, "wirings", WiringUpdate, Wiring)
WIRINGS_DELETE = declare(SERVICE, "wirings", WiringDelete, Unwired)
USERS_LIST = declare(SERVICE, "users", ListAll, list[User])
USERS_UNREGISTERED = declare(SERVICE, "users", UsersUnregistered, list[Unregistered])
ROLES_LIST = declare(SERVICE, "roles", ListAll, list[Role])
ROLES_GRANT = declare(SERVICE, "roles", RoleGrant, RoleGranted)
ROLES_REVOKE = declare(SERVICE, "roles", RoleRevoke, RoleRevoked)
STANDING = declare(SERVICE, "standing", StandingGet, Standing)
MEMBERS_LIST = declare(SERVICE, "members", GroupFilter, list[Member])
MEMBERS_ADD = declare(SERVICE, "members", MemberAdd, MemberAdded)
MEMBERS_REMOVE = declare(SERVICE, "members", MemberRemove, MemberRemoved)
DESTINATIONS_LIST = declare(SERVICE, "destinations", GroupFilter, list[Destination])
DESTINATIONS_ADD = declare(SERVICE, "destinations", DestinationAdd, Destination)
DESTINATIONS_REMOVE = declare(SERVICE, "destinations", DestinationRemove, DestinationRemoved)
SESSIONS_LIST = declare(SERVICE, "sessions", GroupFilter, list[Session])
DROPPED_LIST = declare(SERVICE, "dropped", DroppedList, list[Dropped])
ADMIT = declare(SERVICE, "admit", AdmitInvite, Admission)
PAIR = declare(SERVICE, "pair", PairCreate, Pairing)
APPROVERS = declare(SERVICE, "approvers", ApproversGet, Approvers)
APPROVALS_LIST = declare(SERVICE, "approvals", ListAll, list[HeldApproval])
