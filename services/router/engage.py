"""The routing decision: which agent groups an inbound message engages, as a pure function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clawden.bus import events as ev


@dataclass(frozen=True)
class Wiring:
    agent_group: str
    channel: str
    chat_id: str  # "*" wires every chat of the channel


@dataclass(frozen=True)
class Engagement:
    agent_group: str
    route: ev.Route


@dataclass(frozen=True)
class Drop:
    reason: str


def decide(message: ev.InboundMessage, wirings: list[Wiring]) -> list[Engagement] | Drop:
    """Engage every agent group wired to the message's chat, or say why nobody is."""
    if message.sender.is_bot:
        return Drop("message from a bot")
    if not message.text.strip() and not message.attachments:
        return Drop("empty message")
    matches = sorted({
        w.agent_group for w in wirings
        if w.channel == message.route.channel and w.chat_id in (message.route.chat_id, "*")
    })
    if not matches:
        return Drop("chat is not wired to any agent group")
    return [Engagement(agent_group=g, route=message.route) for g in matches]


def command_of(text: str) -> Literal["", "clear"]:
    """`/clear` resets a session's conversation; other slash words go to the agent as text."""
    word = text.strip().split(maxsplit=1)[0].lower() if text.strip() else ""
    return "clear" if word == "/clear" else ""
