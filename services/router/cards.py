"""The approval requests the router sends: a new sender knocking, a new chat asking to be connected."""

from __future__ import annotations

from clawden.bus import events as ev

REQUESTER = "router"
# Button ids the approvals service hands back as the decision's `value`.
APPROVE = "approve"
DENY = "deny"
CONNECT_PREFIX = "connect:"
MAX_CHOICES = 5  # chat platforms render a handful of buttons well


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
            buttons=(*buttons, ev.Button(id=DENY, label="Ignore this chat", style="danger")),
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
