"""The routing decision, pure: one inbound message and what the router knows about its chat and
sender in, the deliveries, approvals, replies and drops it leads to out. No IO, no clock."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from clawden.bus import events as ev
from services.router import commands, pairing
from services.router.entities import (
    ALL_CHATS,
    ALWAYS,
    EngageMode,
    IgnoredPolicy,
    SenderScope,
    SessionMode,
    UnknownSenderPolicy,
)

# --- what the router knows (built by the store) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wiring:
    """One agent group wired to the message's chat (its own row, or the channel's `*` row)."""

    agent_group: str
    engage_mode: EngageMode = "pattern"
    engage_pattern: str = ALWAYS
    sender_scope: SenderScope = "all"
    ignored_messages: IgnoredPolicy = "drop"
    session_mode: SessionMode = "shared"
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Chat:
    """The messaging group, as far as routing cares."""

    known: bool = True  # the chat has a row, or its channel has a `*` row
    policy: UnknownSenderPolicy = "request_approval"
    denied: bool = False  # the owner declined to connect this chat
    registration_pending: bool = False


@dataclass(frozen=True, slots=True)
class Standing:
    """Who the sender is to each agent group. Owners and admins are implicit members."""

    user_id: str
    owner: bool = False
    admin: bool = False  # global admin
    admin_of: frozenset[str] = frozenset()
    member_of: frozenset[str] = frozenset()
    denied_for: frozenset[str] = frozenset()  # an approver said no; not asked again
    pending_for: frozenset[str] = frozenset()  # an approval is already out

    def is_admin_of(self, agent_group: str) -> bool:
        return self.owner or self.admin or agent_group in self.admin_of

    def knows(self, agent_group: str) -> bool:
        return agent_group in self.member_of or self.is_admin_of(agent_group)


@dataclass(frozen=True, slots=True)
class View:
    chat: Chat
    sender: Standing
    wirings: tuple[Wiring, ...] = ()
    # Agent groups that already hold a session for the message's thread (mention-sticky).
    sticky: frozenset[str] = frozenset()
    pairing_digest: str = ""  # the channel's live pairing code, if `clawden pair` made one
    can_register: bool = True  # somebody (an owner or global admin) could approve a new chat
    has_groups: bool = True  # an agent group exists that a new chat could be wired to


# --- what it decides -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Which conversation a delivery belongs to; `*`/`*` for an agent-shared session."""

    agent_group: str
    channel: str
    chat_id: str
    thread_id: str = ""


@dataclass(frozen=True, slots=True)
class Deliver:
    agent_group: str
    session: SessionKey
    route: ev.Route  # where replies go: the message's chat, its thread only where threads count
    trigger: bool = True  # False: stored for context (accumulate), the agent is not woken
    command: ev.WakeCommand = ""  # an admin's command, answered by the agent runner without the model


@dataclass(frozen=True, slots=True)
class Reply:
    """The router answers the chat itself (a refusal, a pairing confirmation)."""

    text: str
    refusal: bool = False  # the message will not be answered (sent as kind "error")


@dataclass(frozen=True, slots=True)
class AskSender:
    """Hold the message until an approver lets this sender talk to the agent group."""

    agent_group: str
    new: bool  # False: a request is already out; the message joins it


@dataclass(frozen=True, slots=True)
class AskChannel:
    """Hold the message until the owner connects this chat to an agent group."""

    new: bool


@dataclass(frozen=True, slots=True)
class NoteSender:
    """Remember a refused sender, so `clawden users unregistered` can show who knocked."""

    agent_group: str
    reason: str


@dataclass(frozen=True, slots=True)
class PairOwner:
    """The message is the channel's pairing code: its sender becomes an owner."""


Action = Deliver | Reply | AskSender | AskChannel | NoteSender | PairOwner


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...] = ()
    # Why the message reached no agent, or "" when something happened. Chatter the router was
    # never meant to see (unaddressed lines in a group chat) is dropped unrecorded.
    dropped: str = ""
    record: bool = True

    @property
    def deliveries(self) -> tuple[Deliver, ...]:
        return tuple(a for a in self.actions if isinstance(a, Deliver))


def _drop(reason: str, *, record: bool = True) -> Decision:
    return Decision(dropped=reason, record=record)


# --- the decision ----------------------------------------------------------------------------------


def effective_thread(message: ev.InboundMessage) -> str | None:
    """Threads count only where the platform has them; elsewhere a chat is one conversation."""
    return (message.route.thread_id or None) if message.supports_threads else None


def addressed(message: ev.InboundMessage) -> bool:
    """A direct message is always meant for the bot; in a group the platform says so by a mention."""
    return message.mentioned or not message.is_group


def decide(message: ev.InboundMessage, view: View, *, only: str | None = None) -> Decision:
    """Route one message. `only` replays a held message for the one agent group it was held for."""
    text = message.text.strip()
    if (screened := _screen(message, text, view, only)) is not None:
        return screened
    command = commands.parse(text)
    if command.kind == "ignored":
        return _drop(f"/{command.word} is a command for the agent's host, not the agent")
    is_addressed = addressed(message)
    wirings = view.wirings if only is None else tuple(w for w in view.wirings if w.agent_group == only)
    if not wirings:
        if only is not None:
            return _drop(f"agent group {only} is no longer wired to this chat")
        return _unwired(view, is_addressed, message.route)

    thread = effective_thread(message)
    turn = _Turn(
        message,
        view,
        text,
        command,
        is_addressed,
        thread,
        ev.Route(channel=message.route.channel, chat_id=message.route.chat_id, thread_id=thread),
    )
    actions: list[Action] = []
    refusals: list[str] = []
    for wiring in sorted(wirings, key=_wiring_order):
        done, refusal = _judge(wiring, turn)
        actions += done
        if refusal:
            refusals.append(f"{wiring.agent_group}: {refusal}")

    if any(isinstance(a, Deliver | Reply | AskSender) for a in actions):
        return Decision(tuple(actions))
    if refusals:
        return Decision(tuple(actions), dropped="; ".join(refusals))
    # Nobody engaged: unremarkable in a group chat unless the bot was addressed.
    return Decision(tuple(actions), dropped="no wired agent group engaged", record=is_addressed)


def _screen(message: ev.InboundMessage, text: str, view: View, only: str | None) -> Decision | None:
    """What is decided before any wiring is looked at: refusals, bots, empty lines, the pairing code."""
    if message.refused:
        return _drop(message.refused)
    if message.sender.is_bot:
        return _drop("message from a bot", record=False)
    if not text and not message.attachments:
        return _drop("empty message")
    if only is None and view.pairing_digest and pairing.matches(text, view.pairing_digest):
        return Decision((PairOwner(),))
    return None


@dataclass(frozen=True, slots=True)
class _Turn:
    """One message as every wiring of its chat judges it."""

    message: ev.InboundMessage
    view: View
    text: str
    command: commands.Command
    is_addressed: bool
    thread: str | None
    route: ev.Route


def _judge(wiring: Wiring, turn: _Turn) -> tuple[list[Action], str]:
    """What one wiring does with the message, and why it refused it ("" when it did not)."""
    group = wiring.agent_group
    sender, policy, command = turn.view.sender, turn.view.chat.policy, turn.command
    engaged = _engages(wiring, turn.text, turn.is_addressed, turn.message.is_group, turn.thread, turn.view.sticky)
    known = sender.knows(group)
    scope_ok = wiring.sender_scope == "all" or known
    if not engaged:
        # Context for later, never a way around the gates, and never an approval card for a
        # line that was not addressed to the agent.
        if (
            wiring.ignored_messages == "accumulate"
            and (known or policy == "public")
            and scope_ok
            and command.kind == "text"
        ):
            return [Deliver(group, _session(wiring, turn.message, turn.thread), turn.route, trigger=False)], ""
        return [], ""
    if not known and policy != "public":
        if group in sender.denied_for:
            return [], "an approver declined this sender"
        if policy == "strict":
            return [NoteSender(group, "unknown sender (strict chat)")], "unknown sender (strict chat)"
        return [AskSender(group, new=group not in sender.pending_for)], ""
    if not scope_ok:
        return [NoteSender(group, "sender is not a member")], "only members may talk to it here"
    if command.kind == "admin" and not sender.is_admin_of(group):
        return [Reply(f"Only an admin of {group} can use /{command.word}.", refusal=True)], ""
    return [Deliver(group, _session(wiring, turn.message, turn.thread), turn.route, command=command.wake_command)], ""


def _unwired(view: View, is_addressed: bool, route: ev.Route) -> Decision:
    if not is_addressed:
        return _drop("chat is not wired to any agent group", record=False)
    if view.chat.denied:
        return _drop("the owner declined to connect this chat")
    if view.chat.registration_pending:
        return Decision((AskChannel(new=False),))
    if not view.has_groups:
        return _drop(
            "chat is not wired to any agent group, and there is none to wire it to: create one"
            f" (`clawden groups create NAME`) and wire it (`clawden wire add {route.channel}"
            f" {route.chat_id} NAME`)"
        )
    if not view.can_register:
        return _drop(
            "chat is not wired to any agent group, and there is no owner to approve it"
            " (pair one with `clawden pair <channel>`)"
        )
    return Decision((AskChannel(new=True),))


def _wiring_order(w: Wiring) -> tuple[int, str]:
    return (-w.priority, w.agent_group)


def _engages(
    w: Wiring, text: str, is_addressed: bool, is_group: bool, thread: str | None, sticky: frozenset[str]
) -> bool:
    if w.engage_mode == "pattern":
        if w.engage_pattern == ALWAYS:
            return True
        compiled = _compile(w.engage_pattern)
        # A pattern that does not compile (written before validation existed) engages nobody:
        # failing open would let one bad row answer every line of a group chat.
        return compiled is not None and compiled.search(text) is not None
    if is_addressed:
        return True
    return w.engage_mode == "mention-sticky" and is_group and thread is not None and w.agent_group in sticky


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error:
        return None


def _session(w: Wiring, message: ev.InboundMessage, thread: str | None) -> SessionKey:
    if w.session_mode == "agent-shared":
        return SessionKey(w.agent_group, ALL_CHATS, ALL_CHATS)
    # In a threaded group chat every thread is its own conversation whatever the wiring says, and so is
    # every topic (which the platform keeps as a chat of its own, in a direct chat too: Telegram's topics in
    # a private chat with the bot); `per-thread` also splits a direct chat's other threads.
    per_thread = thread is not None and (w.session_mode == "per-thread" or message.is_group or message.topic)
    return SessionKey(
        w.agent_group, message.route.channel, message.route.chat_id, thread if per_thread and thread else ""
    )
