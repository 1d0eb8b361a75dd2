"""The approval requests the router sends: a new sender knocking, a new chat asking to be connected (to an
agent group, or to a new one the owner names)."""

from __future__ import annotations

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
NAMING_SUFFIX = "-name"  # the follow-up notice's id: the channel approval's, with this
STARTER_MEMORY = """\
# {name}

You are the {name} agent on your owner's home server, answering the chat {chat}. Reply with the
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
            " (a name of lowercase letters, digits, - and _, at most 40).",
        ),
        expires_at=expires_at,
        approvers=(owner,),
        context={"channel": owner.partition(":")[0]},
    )


def named(text: str) -> str | None:
    """The NAME of `/newagent NAME` ("" when none was given); None when the text is not that command."""
    if commands.parse(text).word != NAME_WORD:
        return None
    words = text.split()
    return words[1] if len(words) == 2 else ""


def name_problem(name: str, *, taken: bool) -> str:
    """Why `name` cannot be the new agent group's ("" when it can)."""
    if not ev.GROUP_NAME.fullmatch(name):
        return (
            f"Give the new agent a name: /{NAME_WORD} NAME, with lowercase letters, digits, - and _"
            " (at most 40, starting with a letter or digit)."
        )
    if taken:
        return f"An agent group or folder named {name} exists already: /{NAME_WORD} another name."
    return ""


def starter_memory(name: str, chat: str) -> str:
    """A new agent group's first CLAUDE.md: the router keeps it with the group (it goes to the runner)."""
    return STARTER_MEMORY.format(name=name, chat=chat)[: ctl.MAX_STARTER_MEMORY]
