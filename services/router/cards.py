"""The approval requests the router sends: a new sender knocking, a new chat asking to be connected (to an
agent group, or to a new one the owner names)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from clawden.bus import events as ev
from clawden.bus.ctl import router as ctl
from services.router import commands

REQUESTER = "router"
# Button ids the approvals service hands back as the decision's `value`.
APPROVE = "approve"
DENY = "deny"
CONNECT_PREFIX = "connect:"
MAX_CHOICES = 5  # chat platforms render a handful of buttons well
NEW_AGENT = "new-agent"  # the channel card's choice of a new agent group, named by the owner next
NAME_WORD = "newagent"  # `/newagent NAME`: the owner's answer, in any chat they write from
MAX_NAME = 40  # ev.GROUP_PATTERN's
NAME_RULE = f"lowercase letters, digits, - and _, at most {MAX_NAME}, starting with a letter or digit"
NAMING_SUFFIX = "-name"  # the follow-up notice's id: the channel approval's, with this
# The notice to whoever pressed a button the router did not carry out: the pressed card's id, with this.
UNDONE_SUFFIX = "-undone"
NO_LONGER_MAY_NAME = (
    "No agent group was made: only a global admin or an owner may make a new agent, and you are neither any more."
)
AMEND_SUFFIX = "-amend"  # the word under that card's outcome, that the choice was not carried out
STARTER_MEMORY = """\
# {name}

You are the {name} agent on your owner's home server{answering}. Reply with the
`send_message` tool; keep replies short and plain, as in a chat.

This folder is your memory: notes you keep here survive between conversations. Your owner may
rewrite this file to tell you what you are for.
"""


def _chat_label(route: ev.Route, chat_name: str) -> str:
    return f"{chat_name} ({route.channel})" if chat_name else f"chat {route.chat_id} on {route.channel}"


def sender_request(
    approval_id: str,
    message: ev.InboundMessage,
    user_id: str,
    agent_group: str,
    approvers: tuple[str, ...],
    expires_at: float,
) -> ev.ApprovalRequest:
    who = f"{message.sender.name} ({user_id})" if message.sender.name else user_id
    return ev.ApprovalRequest(
        id=approval_id,
        kind="sender",
        requester=REQUESTER,
        agent_group=agent_group,
        card=ev.Card(
            title="New sender",
            body=f"{who} wants to talk to {agent_group} in {_chat_label(message.route, message.chat_name)}."
            " Allow them?",
            buttons=(
                ev.Button(id=APPROVE, label="Allow", style="primary"),
                ev.Button(id=DENY, label="Deny", style="danger"),
            ),
        ),
        route=message.route,
        expires_at=expires_at,
        approvers=approvers,
        context={"user_id": user_id, "channel": message.route.channel, "chat_id": message.route.chat_id},
    )


def channel_request(
    approval_id: str,
    message: ev.InboundMessage,
    user_id: str,
    groups: tuple[str, ...],
    approvers: tuple[str, ...],
    expires_at: float,
) -> ev.ApprovalRequest:
    """Ask the owner which agent group should answer a chat nobody is wired to; groups[0] is the default."""
    who = f"{message.sender.name} ({user_id})" if message.sender.name else user_id
    kind = "group chat" if message.is_group else "direct chat"
    buttons = tuple(
        ev.Button(id=f"{CONNECT_PREFIX}{g}", label=f"Connect to {g}", style="primary") for g in groups[:MAX_CHOICES]
    )
    return ev.ApprovalRequest(
        id=approval_id,
        kind="channel",
        requester=REQUESTER,
        agent_group=groups[0],
        card=ev.Card(
            title="Connect a new chat?",
            body=f"{who} wrote to the assistant in a {kind}, {_chat_label(message.route, message.chat_name)},"
            " which no agent group answers yet.",
            buttons=(
                *buttons,
                ev.Button(id=NEW_AGENT, label="New agent…"),
                ev.Button(id=DENY, label="Ignore this chat", style="danger"),
            ),
        ),
        route=message.route,
        expires_at=expires_at,
        approvers=approvers,
        context={
            "user_id": user_id,
            "channel": message.route.channel,
            "chat_id": message.route.chat_id,
            "is_group": "1" if message.is_group else "0",
        },
    )


def chosen_group(decision: ev.ApprovalDecision, default: str) -> str:
    """The agent group an approved channel request connects: the button's, else the proposed one."""
    value = decision.value.strip()
    if value.startswith(CONNECT_PREFIX):
        value = value[len(CONNECT_PREFIX) :]
    return value if value and value != APPROVE else default


def choice(value: str) -> str:
    """The words of the button a decision's `value` names."""
    if value.startswith(CONNECT_PREFIX):
        return f"Connect to {value[len(CONNECT_PREFIX) :]}"
    return {APPROVE: "Allow", NEW_AGENT: "New agent…"}.get(value, value or "Allow")


def again_id(decision_id: str) -> str:
    """The id of the card that asks again when the decision made on card `decision_id` was not carried out: one
    card, however often that decision is delivered."""
    return f"rt-{hashlib.sha256(decision_id.encode()).hexdigest()[:16]}"


def asked_again(request: ev.ApprovalRequest, decision: ev.ApprovalDecision, why: str) -> ev.ApprovalRequest:
    """A fresh card for an approval whose last card was answered in a way the router could not carry out."""
    line = f"Asked again: {decision.decided_by}'s answer ({choice(decision.value)}) was not carried out: {why}."
    card = msgspec.structs.replace(request.card, body=f"{request.card.body}\n\n{line}")
    return msgspec.structs.replace(request, card=card)


def not_done(
    decision: ev.ApprovalDecision,
    kind: Literal["sender", "channel"],
    agent_group: str,
    about: str,
    why: str,
    *,
    again: bool,
) -> ev.ApprovalRequest:
    """The word to whoever pressed a button the router did not carry out, as a notice (no buttons) in their own
    chat: the card they pressed shows their choice (the approvals service edits it at the press), and the router
    cannot change it."""
    then = " A new card asks again." if again else ""
    return ev.ApprovalRequest(
        id=f"{decision.id}{UNDONE_SUFFIX}",
        kind=kind,
        requester=REQUESTER,
        agent_group=agent_group or "main",
        card=ev.Card(
            title="Not carried out",
            body=f"You chose {choice(decision.value)} on the card about {about}, and it was not carried out: {why}."
            f" Nothing was changed.{then}",
        ),
        approvers=(decision.decided_by,),
        context={"channel": decision.decided_by.partition(":")[0]},
    )


def amendment(
    decision: ev.ApprovalDecision, kind: Literal["sender", "channel"], agent_group: str, why: str
) -> ev.ApprovalRequest:
    """The word the approvals service shows under the pressed card's outcome, so that card does not read as done."""
    return ev.ApprovalRequest(
        id=f"{decision.id}{AMEND_SUFFIX}",
        kind=kind,
        requester=REQUESTER,
        agent_group=agent_group or "main",
        card=ev.Card(title="Not carried out", body=f"⚠️ Not carried out: {why}."),
        amends=decision.id,
    )


def name_request(approval_id: str, chat: str, owner: str, expires_at: float) -> ev.ApprovalRequest:
    """The follow-up to the owner who chose "New agent": a notice (no buttons, so nothing to decide) in their
    direct chat, asking for the name in the one way every platform allows: a message."""
    return ev.ApprovalRequest(
        id=f"{approval_id}{NAMING_SUFFIX}",
        kind="channel",
        requester=REQUESTER,
        agent_group="main",
        card=ev.Card(
            title="Name the new agent",
            body=f"Reply with /{NAME_WORD} NAME to create agent group NAME for {chat} and connect the chat to it"
            f" (a name of {NAME_RULE}).",
        ),
        expires_at=expires_at,
        approvers=(owner,),
        context={"channel": owner.partition(":")[0]},
    )


def named(text: str) -> str | None:
    """What follows `/newagent` ("" when nothing does), as given; None when the text is not that command."""
    if commands.parse(text).word != NAME_WORD:
        return None
    parts = text.split(maxsplit=1)
    return parts[1].strip() if len(parts) == 2 else ""


def _slug(text: str) -> str:
    """A name made of several words: lowercase, joined by -, what no name may hold left out."""
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-_")[:MAX_NAME].rstrip("-_")


def name_problem(given: str, chat: str, folders: Mapping[str, str]) -> str:
    """Why `/newagent {given}` makes no agent group for `chat` ("" when it does), said so that the owner knows what
    to send instead. `folders`: every agent group's folder, by its name (the new group's folder is its name)."""
    waits = f" Nothing was created; {chat} still waits for a name."
    if not given:
        return f"Give the new agent a name: /{NAME_WORD} NAME ({NAME_RULE}).{waits}"
    if len(given.split()) > 1:
        slug = _slug(given)
        instead = (
            f" /{NAME_WORD} {slug} would name it {slug}." if slug and not name_problem(slug, chat, folders) else ""
        )
        return f"An agent's name is one word ({NAME_RULE}).{instead}{waits}"
    if not ev.GROUP_NAME.fullmatch(given):
        lower = given.lower()
        if not ev.GROUP_NAME.fullmatch(lower):
            return f"{given} cannot name an agent group: give a name of {NAME_RULE}.{waits}"
        taken = name_problem(lower, chat, folders)
        if taken:
            return f"Agent group names are lowercase, so that is {lower}. {taken}"
        return f"Agent group names are lowercase: /{NAME_WORD} {lower} would name it {lower}.{waits}"
    if given in ev.RESERVED_FOLDERS:
        return f"{given} is the folder of the memory every agent group shares: /{NAME_WORD} another name.{waits}"
    if given in folders:
        return f"An agent group named {given} exists already: /{NAME_WORD} another name.{waits}"
    for group, folder in sorted(folders.items()):
        if folder == given:
            return f"Agent group {group} keeps its memory in the folder {given}: /{NAME_WORD} another name.{waits}"
    return ""


def created(name: str, chat: str, *, kept_memory: bool, waiting: Sequence[str]) -> str:
    """The owner's answer once `/newagent NAME` made the group: what was made, and which chats still wait for a
    name (the next `/newagent NAME` names the first of them)."""
    said = f"Created agent group {name} (folder groups/{name}) and connected {chat} to it."
    if kept_memory:
        said += " Its folder had a CLAUDE.md already, which is kept."
    if waiting:
        said += f" Still waiting for a name: {', '.join(waiting)} (/{NAME_WORD} NAME names {waiting[0]} next)."
    return said


def starter_memory(name: str, chat: str = "") -> str:
    """A new agent group's first CLAUDE.md: the router keeps it with the group (it goes to the runner). `chat`: the
    one it was made for (`/newagent`); a group made with `clawden groups create` has none yet."""
    answering = f", answering the chat {chat}" if chat else ""
    return STARTER_MEMORY.format(name=name, answering=answering)[: ctl.MAX_STARTER_MEMORY]
