"""What the router tells the owners on its own, when no chat asked: where each owner reads it, and its words."""

from __future__ import annotations

import time
from collections.abc import Sequence

from clawden.bus import events as ev
from services.router.entities import TERMINAL_CHANNEL

# Platforms whose direct chat with a user has the user's handle as its id (a Telegram private chat's id is
# the user's id: core.telegram.org/bots/api#chat), so an owner there can be written to without a chat seen.
DIRECT_BY_HANDLE = frozenset({"telegram", "whatsapp", "signal", "imessage", "email"})
TERMINAL_CHAT = "terminal"  # `clawden chat`'s default chat: the machine owner's terminal


def owner_chats(owners: Sequence[str], channel: str) -> list[ev.Route]:
    """Where the owners hear about `channel`: their direct chats there, where the platform derives those
    from the handle; else the machine owner's terminal. Empty: nobody can be told (the log still says it)."""
    on_channel = [handle for owner in owners if (handle := _handle(owner, channel))]
    if on_channel and channel in DIRECT_BY_HANDLE:
        return [ev.Route(channel=channel, chat_id=handle) for handle in on_channel]
    if any(_handle(owner, TERMINAL_CHANNEL) for owner in owners):
        return [ev.Route(channel=TERMINAL_CHANNEL, chat_id=TERMINAL_CHAT)]
    return []


def messages_lost(event: ev.MessagesLost, route: ev.Route) -> ev.OutboundMessage:
    """The notice of messages a platform dropped unread, for one owner's chat."""
    count = f"{event.count} message{'s' if event.count != 1 else ''}" if event.count else "Messages"
    since = f" since {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(event.since))}" if event.since else ""
    why = f" ({event.why})" if event.why else ""
    text = (
        f"⚠️ {count} sent on {event.channel}{since} never reached me: {event.channel} dropped them before I "
        f"could fetch them{why}. Nobody answered them, and who sent them is unknown; ask people who wrote "
        f"meanwhile to write again."
    )
    return ev.OutboundMessage(id=f"router:{event.key}:{route.chat_id}", route=route, text=text, kind="notice")


def runner_away(route: ev.Route, session_id: str, runner: str, since: float) -> ev.OutboundMessage:
    """The word to a chat whose session's runner has gone silent: its message waits for that machine."""
    text = (
        f"⏳ The machine that runs this conversation (runner {runner}) has not been heard from since "
        f"{time.strftime('%H:%M UTC', time.gmtime(since))}. Your message is kept and will be answered when it is back."
    )
    return ev.OutboundMessage(
        id=f"router:away:{session_id}:{runner}:{since:.3f}", route=route, text=text, kind="notice"
    )


def _handle(user: str, channel: str) -> str:
    prefix = f"{channel}:"
    return user[len(prefix) :] if user.startswith(prefix) else ""
