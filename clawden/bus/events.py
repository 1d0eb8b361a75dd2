"""Every payload on the bus: frozen msgspec Structs tagged by `type`, decoded once at the edge.

Schema evolution: add only optional or defaulted fields. Unknown fields are tolerated so an
older consumer keeps working beside a newer producer; a wrong type, a missing field or an
unknown tag is rejected with the JSON path in the error.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from clawden import mcpservers
from clawden.bus import subjects
from clawden.mcpservers import McpServer

# Largest text a chat message may carry on the bus; bridges split or refuse above it.
MAX_TEXT = 64 * 1024
T = TypeVar("T")
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
# A value that becomes a NATS subject token (a channel, a runner, an approval id): refused when it is
# decoded, so no handler meets one that `subjects.token` would reject halfway through its work.
Token = Annotated[str, msgspec.Meta(pattern=subjects.TOKEN_PATTERN)]
# Names that become a folder on the host (sessions/<group>/<session>): never `..`, a slash or a dot
# file, whoever sent them. "" where the field may be empty.
FOLDER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# An agent group's name: the one rule, for the router that creates groups and everyone who reads them.
GROUP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
GROUP_NAME = re.compile(GROUP_PATTERN)
GroupName = Annotated[str, msgspec.Meta(pattern=GROUP_PATTERN)]
SessionId = Annotated[str, msgspec.Meta(pattern=subjects.TOKEN_PATTERN)]
OptionalGroup = Annotated[str, msgspec.Meta(pattern=f"^$|{GROUP_PATTERN}")]
OptionalSession = Annotated[str, msgspec.Meta(pattern=f"^$|{subjects.TOKEN_PATTERN}")]
OptionalToken = Annotated[str, msgspec.Meta(pattern=f"^$|{subjects.TOKEN_PATTERN}")]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class _Part(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Sender(_Part, frozen=True):
    id: str
    name: str = ""
    is_bot: bool = False


class Attachment(_Part, frozen=True):
    name: str
    mime: str = "application/octet-stream"
    size: int = 0
    url: str = ""  # where the bridge can fetch it from; never fetched by the router
    # Why the bridge has no file for it (too large, refused, not handed over in time); its url is then "". The agent
    # reads it beside the attachment ("not saved: ...").
    error: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class Route(_Part, frozen=True):
    """Where a conversation lives on its platform."""

    channel: Token
    chat_id: str
    thread_id: str | None = None


class Button(_Part, frozen=True):
    id: str
    label: str
    style: Literal["default", "primary", "danger"] = "default"


class Card(_Part, frozen=True):
    title: str
    body: str = ""
    buttons: tuple[Button, ...] = ()


# --- chat in ---------------------------------------------------------------------------------------


class InboundMessage(_Event, tag="inbound.message", frozen=True):
    """A chat message a bridge received. Natural key: `<channel>:<message_id>`."""

    route: Route
    message_id: str
    sender: Sender
    text: Text
    sent_at: float
    is_group: bool = False
    chat_name: str = ""
    mentioned: bool = False
    reply_to: str | None = None
    attachments: tuple[Attachment, ...] = ()
    # The platform keeps threads (Slack, Discord…): in a group chat each thread is its own
    # conversation. False: the router ignores `route.thread_id` and the chat is one conversation.
    supports_threads: bool = False
    # The thread is a topic (Telegram's forum topics, and topics in a private chat with the bot): a
    # conversation of its own, so each topic is its own session, in a direct chat too, whatever the
    # wiring's session mode (a thread in a Slack DM, a side remark, stays with the chat unless `per-thread`).
    topic: bool = False
    # Why the bridge vouches against this message reaching any agent ("" when it does not): a sender the
    # platform could not authenticate (an email whose From fails DKIM/SPF alignment), automatic mail (an
    # auto-reply, a bounce). The router records it under `clawden dropped` with this reason, and answers nothing.
    refused: str = ""

    @property
    def key(self) -> str:
        return f"{self.route.channel}:{self.message_id}"


class InboundEdit(_Event, tag="inbound.edit", frozen=True):
    """A person changed the text of a message they sent. `message_id` names the original (as its
    `InboundMessage` did); `text` is the whole new text. The router passes it to every session the
    original went to, and the agent runner decides when it reads it: an original not yet read is read
    as edited, one already read is followed by a plain note. `edit_id` names this edit on the platform
    (an update or event id), so two edits of one message stay two. Natural key:
    `<channel>:edit:<message_id>:<edit_id>`."""

    route: Route
    message_id: str
    edit_id: str
    sender: Sender
    text: Text
    edited_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.route.channel}:edit:{self.message_id}:{self.edit_id}"


class InboundDelete(_Event, tag="inbound.delete", frozen=True):
    """A message was deleted on its platform. Like an edit it follows the original to its sessions: an
    original not yet read is never read, one already read is followed by a plain note. `sender` is who
    deleted it, when the platform says (Discord does not; a Matrix moderator may redact another's
    message). Natural key: `<channel>:delete:<message_id>`."""

    route: Route
    message_id: str
    sender: Sender | None = None
    deleted_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.route.channel}:delete:{self.message_id}"


class InboundAction(_Event, tag="inbound.action", frozen=True):
    """A button click on a card. Natural key: `<channel>:<action_id>`."""

    route: Route
    action_id: str
    sender: Sender
    card_id: str
    button_id: str
    message_id: str | None = None
    sent_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.route.channel}:{self.action_id}"


class ChatMoved(_Event, tag="inbound.chat_moved", frozen=True):
    """The platform gave a chat a new id (a Telegram group upgraded to a supergroup): a bridge publishes it
    on its inbound subject, the router carries the chat's wirings, sessions and held approvals over to the
    new id and announces it on `event.router.chat_moved`. Natural key: `<channel>:moved:<old_chat_id>`."""

    channel: Token
    old_chat_id: str
    new_chat_id: str
    sent_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.channel}:moved:{self.old_chat_id}"


class MessagesLost(_Event, tag="inbound.lost", frozen=True):
    """A bridge learnt that its platform dropped messages before the bridge fetched them (Telegram keeps an
    undelivered update 24 hours): nobody answered them, and what they said and who sent them are gone.
    Published on the bridge's inbound subject; the router tells the owners. Natural key:
    `<channel>:lost:<marker>`."""

    channel: Token
    marker: str  # where the gap ends, in the platform's terms (Telegram: the first update id after it)
    count: int = 0  # how many, at least; 0: unknown
    since: float = 0.0  # when the bridge last fetched anything before the gap; 0: unknown
    detected_at: float = 0.0
    why: str = ""  # what the platform keeps, in a person's words

    @property
    def key(self) -> str:
        return f"{self.channel}:lost:{self.marker}"


# --- chat out --------------------------------------------------------------------------------------


class OutboundMessage(_Event, tag="outbound.message", frozen=True):
    """Something to post. `id` is unique per outbound row and is the dedupe key end to end."""

    id: str
    route: Route
    text: Text
    session_id: OptionalSession = ""
    agent_group: OptionalGroup = ""
    seq: int = 0
    reply_to: str | None = None
    card: Card | None = None
    files: tuple[str, ...] = ()
    # Who speaks: "reply", the agent (or the host answering a command); "notice", the host about a
    # message still to be answered (queued, retried); "error", the host saying it will not be answered
    # (failed, refused, the agent's turn failed). `clawden chat --once` waits past a notice and exits non-zero
    # on an error.
    kind: Literal["reply", "notice", "error"] = "reply"
    # The platform's id of the person's message this answers, where the sender knows it (a reply the agent marked
    # as answering it, the host's word that it failed); not quoted on the platform, which is `reply_to`'s part.
    # `clawden chat --once` waits for the answer to its own message, and shows an earlier one as earlier.
    answering: str = ""


class OutboundEdit(_Event, tag="outbound.edit", frozen=True):
    id: str
    route: Route
    target_message_id: str
    text: str
    card: Card | None = None
    session_id: OptionalSession = ""
    seq: int = 0
    # The outbound message whose part `target_message_id` is, where the sender knows it: an instance of the bridge
    # that did not send it reads its parts from the shared sent-log (checked to hold the target), not only the one.
    target_outbound_id: str = ""


class OutboundReaction(_Event, tag="outbound.reaction", frozen=True):
    id: str
    route: Route
    target_message_id: str
    emoji: str
    session_id: OptionalSession = ""
    seq: int = 0


ReceiptState = Literal["delivered", "read"]


class DeliveryReceipt(_Event, tag="receipt", frozen=True):
    """A bridge's word on one outbound event: the platform took it (with its id) or refused it, and later,
    where the platform tells bots, that the person read it."""

    outbound_id: str
    route: Route
    ok: bool
    # What an ok receipt says: "delivered" (the platform took it, or it reached the person's device) or "read"
    # (the person opened it: WhatsApp's read status). A receipt from before the field decodes as delivered.
    state: ReceiptState = "delivered"
    session_id: OptionalSession = ""
    seq: int = 0
    platform_message_id: str | None = None
    error: str | None = None
    # False: the bridge is still retrying (a delay notice); a final receipt for the id follows.
    final: bool = True
    # The platform lost its answer to a send and the bridge did not repeat it (a repeat could
    # duplicate): the message probably arrived, but nobody can confirm it.
    unconfirmed: bool = False
    # One platform id per part when the bridge split the message ("" for an unconfirmed part);
    # `platform_message_id` is the last part, the one that carries a card's buttons.
    part_ids: tuple[str, ...] = ()


def receipt_for(
    event: OutboundMessage | OutboundEdit | OutboundReaction,
    *,
    ok: bool = True,
    platform_message_id: str | None = None,
    error: str | None = None,
    final: bool = True,
    unconfirmed: bool = False,
    part_ids: tuple[str, ...] = (),
) -> DeliveryReceipt:
    """The receipt for `event`, naming it as the runner looks it up (its id, route, session and seq)."""
    return DeliveryReceipt(
        outbound_id=event.id,
        route=event.route,
        ok=ok,
        session_id=event.session_id,
        seq=event.seq,
        platform_message_id=platform_message_id,
        error=error,
        final=final,
        unconfirmed=unconfirmed,
        part_ids=part_ids,
    )


class Typing(_Event, tag="outbound.typing", frozen=True):
    """The agent is working on a chat's message: the bridge shows "typing…" until it answers.

    A hint, not a message: no receipt; a bridge ignores one older than its typing horizon.
    """

    id: str
    route: Route
    at: float
    active: bool = True
    session_id: OptionalSession = ""


class TypingOff(_Event, tag="bridge.typing_off", frozen=True):
    """One instance of a bridge posted to a chat, or was told the agent stopped: every instance stops renewing
    "typing…" there that a hint before `seq` started. `seq` is the outbound stream's sequence of the event that
    ended it; a chat's hints and messages share one lane of that stream, so the order is exact, whichever
    instance took which. Core NATS at `subjects.typing_off`: a hint lost with a twin's connection ends at the
    typing horizon, as before."""

    route: Route
    seq: int


# --- sessions -----------------------------------------------------------------------------------------


class WakeMessage(_Part, frozen=True):
    id: str
    kind: Literal["chat", "task", "system"]
    text: str
    sender: Sender | None = None
    sent_at: float = 0.0
    trigger: bool = True
    attachments: tuple[Attachment, ...] = ()
    # The platform's own id of a chat message, for the agent's reactions and replies to it.
    platform_message_id: str = ""
    # A task's pre-check: bash the agent's container runs first; it decides whether the model is woken.
    script: str = ""
    # An edit or delete of an earlier message (`InboundEdit`, `InboundDelete`): `revises` is that message's
    # session row id (its wake's `message.id`); the agent runner applies it when it reads the session.
    revision: Literal["", "edit", "delete"] = ""
    revises: str = ""
    # A message relayed from another agent group (sender `agent:<group>`): how many agent-to-agent sends led
    # to it. The router counts it and drops a send past the limit, so two agents cannot loop for ever.
    hops: int = 0


# The router's own channel for agents that talk to each other: a destination on it names an agent group
# (`chat_id`), its outbound lanes are read by the router alone, and no bridge may speak as it.
AGENT_CHANNEL = "agent"
DEFAULT_MAX_HOPS = 4  # agent-to-agent sends in a row before the router drops the next one


class Destination(_Part, frozen=True):
    """A chat an agent group may send to by name (besides the chat it is answering)."""

    name: str
    route: Route
    display_name: str = ""


# Bounds of an agent group's settings, the same for the router (which refuses them at `clawden groups
# create|update`) and the runner (which checks what arrives before using it).
MEMORY_RANGE = (64 * 2**20, 2**40)  # bytes: below 64 MiB nothing starts; 1 TiB is no limit at all
CPUS_RANGE = (0.01, 256.0)
PIDS_RANGE = (32, 65_536)
IDLE_TIMEOUT_RANGE = (5.0, 30 * 86_400.0)  # seconds
MAX_TURNS_RANGE = (1, 10_000)  # model calls for one message
TURN_BUDGET_RANGE = (10.0, 86_400.0)  # seconds one message may take, waits on people not counted
RESERVED_FOLDERS = frozenset({"global"})  # groups/global is every group's read-only shared memory
EFFORTS = ("low", "medium", "high", "xhigh", "max")  # Claude Code's --effort levels
CLI_SCOPES = ("disabled", "group", "global")  # the in-container `clawden`: nothing, its own group, all
MAX_MESSAGES_RANGE = (1, 100)  # pending messages one prompt carries
ASSISTANT_NAME_MAX = 64
# Claude Code's skill names (the SKILL.md `name` and its folder): lowercase letters, digits, hyphens.
SKILL_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,63}$"
_SKILL = re.compile(SKILL_NAME_PATTERN)
_MEMORY = re.compile(r"^(\d{1,13})(\.\d{1,6})?([kmg]b?|b)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
_FOLDER = re.compile(FOLDER_PATTERN)
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,127}$")
# A Docker image reference: [registry[:port]/]path[:tag][@sha256:digest], lowercase path components.
_IMAGE = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*(?::\d{1,5})?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)


def memory_bytes(text: str) -> int | None:
    """Docker's memory notation (`512m`, `2g`, `1.5g`, `300mb`, bytes without a unit); None if it is not that."""
    m = _MEMORY.match(text)
    if m is None:
        return None
    unit = (m.group(3) or "").lower().removesuffix("b")
    return int(float(m.group(1) + (m.group(2) or "")) * _UNITS[unit])


class GroupSettings(_Part, frozen=True):
    """An agent group's settings as the router keeps them (`clawden groups create|update`), sent with
    every wake; the runner applies them at the group's next container start, before config.toml's
    `[groups.<name>]` and its own defaults. "" / 0: not set here. Extra mounts are not among them:
    those stay with the host's admin (config.toml and the mount allowlist)."""

    folder: str = ""  # under the runner's groups/: the group's memory (CLAUDE.md), mounted read-write
    model: str = ""
    image: str = ""
    memory: str = ""  # Docker's notation: 512m, 2g
    cpus: float = 0.0
    pids: int = 0
    idle_timeout: float = 0.0  # seconds an idle container lives
    max_turns: int = 0  # model calls the agent may make for one message
    turn_budget: float = 0.0  # seconds the agent may work on one message
    cli_scope: str = ""  # what its agent may run of the owner's CLI from its container: one of CLI_SCOPES
    effort: str = ""  # Claude Code's --effort: one of EFFORTS
    max_messages_per_prompt: int = 0  # pending messages one prompt carries at most
    assistant_name: str = ""  # what the agent calls itself (the group's name when unset)
    # The skills (global and the group's own) its containers get: None for all of them.
    skills: tuple[str, ...] | None = None
    # MCP servers its agents get, by name, besides config.toml's `[groups.<name>.mcp.<server>]`.
    mcp: dict[str, McpServer] = {}
    # Its CLAUDE.md as it was made (/newagent, create_agent): a runner starting one of its containers writes
    # it into the group's folder when that has none (a host other than the one that made the group). "": none
    # (an older router's wake, or a group made otherwise).
    starter_memory: str = ""
    # When the router last changed them: of two snapshots that arrive out of order, the later one wins.
    changed_at: float = 0.0

    def problems(self) -> dict[str, str]:
        """Each set field that is out of bounds, with why, in words a person can act on."""
        out: dict[str, str] = {}
        if self.folder and (not _FOLDER.match(self.folder) or self.folder in RESERVED_FOLDERS):
            out["folder"] = (
                f"folder {self.folder!r}: one folder name (letters, digits, '.', '-', '_'), not"
                f" {', '.join(sorted(RESERVED_FOLDERS))}"
            )
        if self.model and not _MODEL.match(self.model):
            out["model"] = f"model {self.model!r}: give a model name like claude-sonnet-4-5"
        if self.image and (len(self.image) > 255 or not _IMAGE.match(self.image)):
            out["image"] = f"image {self.image!r}: give an image reference like clawden-agent:latest"
        if self.memory:
            size = memory_bytes(self.memory)
            if size is None or not MEMORY_RANGE[0] <= size <= MEMORY_RANGE[1]:
                out["memory"] = f"memory {self.memory!r}: give a size from 64m to 1024g, e.g. 2g"
        if self.cpus and not (math.isfinite(self.cpus) and CPUS_RANGE[0] <= self.cpus <= CPUS_RANGE[1]):
            out["cpus"] = f"cpus {self.cpus}: give a number from {CPUS_RANGE[0]} to {CPUS_RANGE[1]:g}"
        if self.pids and not PIDS_RANGE[0] <= self.pids <= PIDS_RANGE[1]:
            out["pids"] = f"pids {self.pids}: give a number from {PIDS_RANGE[0]} to {PIDS_RANGE[1]}"
        if self.idle_timeout and not (
            math.isfinite(self.idle_timeout) and IDLE_TIMEOUT_RANGE[0] <= self.idle_timeout <= IDLE_TIMEOUT_RANGE[1]
        ):
            out["idle_timeout"] = (
                f"idle timeout {self.idle_timeout}: give seconds from {IDLE_TIMEOUT_RANGE[0]:g}"
                f" to {IDLE_TIMEOUT_RANGE[1]:.0f} (30 days)"
            )
        if self.max_turns and not MAX_TURNS_RANGE[0] <= self.max_turns <= MAX_TURNS_RANGE[1]:
            out["max_turns"] = (
                f"max turns {self.max_turns}: give a number from {MAX_TURNS_RANGE[0]} to {MAX_TURNS_RANGE[1]}"
            )
        if self.turn_budget and not (
            math.isfinite(self.turn_budget) and TURN_BUDGET_RANGE[0] <= self.turn_budget <= TURN_BUDGET_RANGE[1]
        ):
            out["turn_budget"] = (
                f"turn budget {self.turn_budget}: give seconds from {TURN_BUDGET_RANGE[0]:g} to "
                f"{TURN_BUDGET_RANGE[1]:.0f} (a day)"
            )
        return out | self._tuning_problems()

    def _tuning_problems(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.effort and self.effort not in EFFORTS:
            out["effort"] = f"effort {self.effort!r}: give one of {', '.join(EFFORTS)}"
        if self.cli_scope and self.cli_scope not in CLI_SCOPES:
            out["cli_scope"] = f"cli_scope {self.cli_scope!r}: give one of {', '.join(CLI_SCOPES)}"
        low, high = MAX_MESSAGES_RANGE
        if self.max_messages_per_prompt and not low <= self.max_messages_per_prompt <= high:
            out["max_messages_per_prompt"] = (
                f"max messages per prompt {self.max_messages_per_prompt}: give a number from {low} to {high}"
            )
        if self.assistant_name and (why := assistant_name_problem(self.assistant_name)):
            out["assistant_name"] = why
        bad = [name for name in self.skills or () if not _SKILL.match(name)]
        if bad:
            out["skills"] = (
                f"skill {bad[0]!r}: a skill's name is its folder's, in lowercase letters, digits and hyphens"
            )
        if mcp := mcpservers.problems(self.mcp):
            out["mcp"] = "; ".join(mcp.values())
        return out


def assistant_name_problem(name: str) -> str:
    """Why `name` cannot be what an assistant calls itself ("" when it can): it goes into the system
    prompt, so one printable line, without the markup characters the prompt's elements use."""
    if len(name) > ASSISTANT_NAME_MAX or name != name.strip() or not name.isprintable() or set(name) & set('<>&"'):
        return (
            f"assistant name {name!r}: give one printable line of at most {ASSISTANT_NAME_MAX} characters,"
            " without < > & or quotes"
        )
    return ""


# Chat commands the agent runner answers itself, never the model's text: reset the conversation, tell
# its cost, compact it, tell how full its context is, list the group's files.
WakeCommand = Literal["", "clear", "cost", "compact", "context", "files"]


class Wake(_Event, tag="wake", frozen=True):
    """The router hands a message to a session on a runner (a chat message, a relayed one, a task's due run).
    Key: `<session>:<message id>`."""

    session_id: SessionId
    agent_group: GroupName
    route: Route
    message: WakeMessage
    command: WakeCommand = ""
    # The agent group's named destinations as of this wake: the runner replaces the session's
    # projection with them, so a change reaches a running agent with its next message. None: the
    # sender does not know them (an older scheduler's wake); keep the projection as it is.
    destinations: tuple[Destination, ...] | None = None
    # The agent group's settings as of this wake, likewise: the runner keeps the latest per group and
    # starts the group's containers with them. None: the sender does not know them (an older scheduler's wake).
    group: GroupSettings | None = None
    # The session's placement epoch (`SessionPlaced.epoch`): the runner takes the wake only while the session's
    # folder names no later one, so a runner the session was moved away from writes nothing into it. 0: the
    # sender does not know it (an older router or scheduler); the runner that owns the folder takes it.
    epoch: int = 0

    @property
    def key(self) -> str:
        return f"{self.session_id}:{self.message.id}"


class Adopt(_Event, tag="adopt", frozen=True):
    """The router moved a session to this runner (its runner was declared gone, and the session and group folders
    are on storage every runner mounts: `[runner] shared_storage`). On `subjects.wake(new runner)`, before the
    wakes the old runner had not taken, which follow it re-sent with the new epoch. The runner fences the folder
    with `epoch` (the old runner writes nothing more into it), records the session as a wake would, and starts a
    container if the folder holds unanswered messages. Key: `<session>:adopt:<epoch>`."""

    session_id: SessionId
    agent_group: GroupName
    route: Route
    epoch: int
    from_runner: Token
    destinations: tuple[Destination, ...] | None = None
    group: GroupSettings | None = None

    @property
    def key(self) -> str:
        return f"{self.session_id}:adopt:{self.epoch}"


class SessionPlaced(_Event, tag="session.placed", frozen=True):
    """Where a session runs now: the router's record on `subjects.placement(session)`, a stream that keeps the
    last one per session. Published when the router places a session and again each time it moves one, with
    `epoch` one higher (1 for a new session). Whoever must know a session's runner reads it there: the
    vault (which runner may ask for the session's token)."""

    session_id: SessionId
    agent_group: GroupName
    runner: Token
    epoch: int
    at: float


class TaskOp(_Event, tag="task.op", frozen=True):
    op: Literal["create", "update", "pause", "resume", "cancel", "list"]
    request_id: str
    agent_group: GroupName
    task_id: str | None = None
    session_id: OptionalSession = ""
    route: Route | None = None
    prompt: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    status: str = ""  # "list" only: just the tasks in this state ("": active and paused ones)
    script: str | None = None  # the pre-check script; on update "" removes it, None leaves it
    created_by: str = ""
    # The runner the session was on when the agent asked, recorded with the task ("": the scheduler's default);
    # a run's wake goes wherever the router says the session is then (`TaskDue`).
    runner: Annotated[str, msgspec.Meta(pattern=f"^$|{subjects.TOKEN_PATTERN}")] = ""


class TaskDue(_Event, tag="task.due", frozen=True):
    """A scheduled task's run is due: the scheduler hands it to the router on `subjects.TASK_DUE`, and the router
    wakes the session on the runner it is on now, at its placement epoch, through its outbox (as for a chat
    message), so a run decided while the session moves still reaches it. Key: `id`, `task:<task id>:<instant>`,
    the scheduler's dedupe key and the woken message's id."""

    id: str
    task_id: str
    session_id: SessionId
    agent_group: GroupName
    route: Route
    text: str  # the task's prompt
    at: float  # the instant the run is for (the message's `sent_at`)
    script: str = ""  # the task's pre-check (`WakeMessage.script`)

    @property
    def key(self) -> str:
        return self.id


class TaskOrphaned(_Event, tag="task.orphaned", frozen=True):
    """The router dropped a task's due run: its session is no more (its agent group was deleted, or the chat's
    session gave way to another when the chat got a new id). On `event.router.task_orphaned`; the scheduler pauses
    the task, so it stops firing into nothing and `clawden tasks list` shows it paused. Key: the run's."""

    task_id: str
    run_id: str
    session_id: SessionId
    reason: str

    @property
    def key(self) -> str:
        return f"orphaned:{self.run_id}"


# --- approvals ----------------------------------------------------------------------------------------


class ApprovalRequest(_Event, tag="approval.request", frozen=True):
    id: Token
    kind: Literal["credential", "question", "sender", "channel", "agent_request"]
    requester: str
    agent_group: GroupName
    card: Card
    route: Route | None = None
    expires_at: float = 0.0
    context: dict[str, str] = {}
    # Users (`<channel>:<handle>`) who may decide, most specific first, when the requester knows
    # (the router does: it owns roles). Empty: the approvals service picks.
    approvers: tuple[str, ...] = ()
    # Not a question: a word about the request `amends`, already decided, by the requester that asked it, shown under
    # its card's outcome (`card.body`: the router's "not carried out, and why"). Nothing is asked or decided.
    amends: OptionalToken = ""


class ApprovalWithdrawn(_Event, tag="approval.withdrawn", frozen=True):
    """The requester no longer waits on request `id` (its agent hung up, its own wait ended, it restarted), on the
    subject its requests go to. Only the requester that asked may withdraw it; a pending request is then settled
    as expired (its card edited "Withdrawn: `reason`") and the decision published as usual. One already approved or
    answered is amended: its requester never acted on it. A `last_call` is the exception: the requester still takes a
    decision that reaches it within moments (the vault's own wait ending), and withdraws again, not as a last call,
    only if none does."""

    id: Token
    requester: str
    reason: Text = ""
    last_call: bool = False


class ApprovalDecision(_Event, tag="approval.decision", frozen=True):
    id: Token
    decision: Literal["approved", "denied", "expired", "answered"]
    decided_by: str = ""
    value: str = ""
    decided_at: float = 0.0
    # Why, in plain words, when nobody clicked (no approver, expiry, a restart); shown to the requester.
    reason: str = ""


# --- observability ---------------------------------------------------------------------------------------


class AuditEvent(_Event, tag="audit", frozen=True):
    service: str
    kind: str
    at: float
    summary: str = ""
    fields: dict[str, str] = {}


class RunnerHeartbeat(_Event, tag="runner.heartbeat", frozen=True):
    """A runner's word that it lives and how busy it is, every `every` seconds on `subjects.heartbeat(runner)`
    (core NATS: a missed one is not replayed). Whoever places sessions reads the load from it; one that has
    not come for a few `every`s means the runner is gone or cut off."""

    runner: Token
    at: float  # the runner's wall clock when it sent this
    every: float  # seconds until the next one
    slots: int  # containers it may run at once (`[runner] max_containers`)
    running: int  # sessions with a container (starting, running or stopping)
    queued: int  # sessions waiting for a slot
    free: int  # slots - running, never below 0
    cpus: int  # the host's CPUs
    load: float  # the host's 1-minute load average
    memory_available: int  # bytes the host could still give (MemAvailable), -1 where unknown
    # Agent groups whose extra mounts (config.toml's `[groups.<name>] mounts`) all exist on this host: the router
    # keeps such a group's new sessions on the runners that name it. Empty from a runner of an older version.
    mount_groups: tuple[str, ...] = ()
    # Whether this host's agent containers reach the vault (a runner on another host left in socket mode does not:
    # the gateway sockets are on the vault's host). The router places new sessions on such runners first. True from
    # a runner of an older version.
    reaches_vault: bool = True


# What a bridge publishes on its inbound subject.
Inbound = InboundMessage | InboundEdit | InboundDelete | InboundAction | ChatMoved | MessagesLost
# An edit or delete of a message a bridge passed on earlier.
Revision = InboundEdit | InboundDelete
# What a bridge reads from its outbound lanes.
Outbound = OutboundMessage | OutboundEdit | OutboundReaction | Typing

Event = (
    InboundMessage
    | InboundEdit
    | InboundDelete
    | InboundAction
    | ChatMoved
    | MessagesLost
    | OutboundMessage
    | OutboundEdit
    | OutboundReaction
    | DeliveryReceipt
    | Typing
    | Wake
    | Adopt
    | SessionPlaced
    | TaskOp
    | TaskDue
    | TaskOrphaned
    | ApprovalRequest
    | ApprovalWithdrawn
    | ApprovalDecision
    | AuditEvent
    | RunnerHeartbeat
    | TypingOff
)

_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    """Decode any bus payload; raises msgspec.ValidationError / DecodeError with the JSON path."""
    return _decoder.decode(data)


def decoder_for(kind: type[T]) -> msgspec.json.Decoder[T]:
    """A reusable decoder for one event type (for a union, `msgspec.json.Decoder(Union)` keeps its type)."""
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


_decoders: dict[object, msgspec.json.Decoder[Any]] = {}  # one per kind: each decodes its key
INBOUND_DECODER = msgspec.json.Decoder(Inbound)
OUTBOUND_DECODER = msgspec.json.Decoder(Outbound)
# What a runner reads from its wake subject.
WAKE_DECODER = msgspec.json.Decoder(Wake | Adopt)
TYPING_OFF_DECODER = msgspec.json.Decoder(TypingOff)
# What the approvals service reads from `approval.request`: requests, and requesters withdrawing theirs.
APPROVAL_REQUEST_DECODER = msgspec.json.Decoder(ApprovalRequest | ApprovalWithdrawn)
