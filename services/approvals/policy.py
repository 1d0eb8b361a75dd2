"""The pure rules: where a card goes, who may press it, what a press or a choice at the machine settles,
and how long a card lives. Plain data in, an outcome out; the store applies it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from clawden.bus import events as ev

Decision = Literal["approved", "denied", "answered"]
# When the requester set no expiry: OneCLI holds a request 180 s; a question waits as long as the
# agent's default; a new sender or chat can wait a day for its owner.
DEFAULT_TTL = {"credential": 180.0, "question": 300.0, "agent_request": 3600.0}
LONG_TTL = 24 * 3600.0
# Platforms whose direct chat with a user has the user's own handle as its id (a Telegram private
# chat's id is the user's id; the Matrix bridge makes a direct room for a chat id that is a user id and
# remembers it, the Slack bridge opens the user's DM with conversations.open); `local` is the machine
# owner's terminal, `clawden chat`'s default chat.
DIRECT_BY_HANDLE = frozenset({"telegram", "whatsapp", "signal", "imessage", "email", "matrix", "slack"})
LOCAL_DEFAULT_CHAT = "terminal"


@dataclass(frozen=True)
class Delivery:
    approver: str  # "" when the card goes to the asking chat (a question)
    route: ev.Route


def user_id(channel: str, sender_id: str) -> str:
    """The user a click came from, named like the router names users (`<channel>:<handle>`)."""
    return sender_id if sender_id.startswith(f"{channel}:") else f"{channel}:{sender_id}"


def ttl(kind: str) -> float:
    return DEFAULT_TTL.get(kind, LONG_TTL)


def expiry(request: ev.ApprovalRequest, asked_at: float) -> float:
    """When a request stops being decidable: its own `expires_at`, else its kind's lifetime from when it was
    asked (when it reached the bus), however long the service took to handle it."""
    return request.expires_at or asked_at + ttl(request.kind)


def direct_chat(user: str, known: Mapping[str, ev.Route]) -> ev.Route | None:
    """Where a user reads their own cards: the direct chat we last saw them write in, else one the
    platform derives from the handle; None when the platform needs a chat we never saw."""
    if user in known:
        return known[user]
    channel, _, handle = user.partition(":")
    if not handle:
        return None
    if channel == "local":
        return ev.Route(channel="local", chat_id=LOCAL_DEFAULT_CHAT)
    if channel in DIRECT_BY_HANDLE:
        return ev.Route(channel=channel, chat_id=handle)
    if channel == "discord":  # the bridge opens the DM with a user for the chat id `@<user id>`
        return ev.Route(channel=channel, chat_id=f"@{handle}")
    return None


def choose_delivery(
    request: ev.ApprovalRequest, approvers: Sequence[str], known: Mapping[str, ev.Route]
) -> Delivery | None:
    """A question goes to the chat that asked. Anything else goes to the first approver (most specific
    first) with a reachable direct chat, preferring one on the channel the request came from."""
    if request.kind == "question":
        return Delivery("", request.route) if request.route is not None else None
    reachable = [(a, r) for a in approvers if (r := direct_chat(a, known)) is not None]
    if not reachable:
        return None
    origin = request.route.channel if request.route is not None else request.context.get("channel", "")
    for approver, route in reachable:
        if route.channel == origin:
            return Delivery(approver, route)
    approver, route = reachable[0]
    return Delivery(approver, route)


def may_decide(kind: str, deciders: Sequence[str], card_route: ev.Route, clicker: str, click_route: ev.Route) -> bool:
    """Only the designated approver or another approver of that scope (admins, owners) decides. A
    question with no named deciders is answered by whoever is in the chat that asked, and only there."""
    if deciders:
        return clicker in deciders
    return kind == "question" and (click_route.channel, click_route.chat_id) == (card_route.channel, card_route.chat_id)


def meaning(kind: str, button: ev.Button) -> Decision:
    """What pressing a button decides: a question's choice is its answer; `deny` or a danger button
    says no; any other button (approve, connect to a group…) says yes, its id carried as the value."""
    if kind == "question":
        return "answered"
    if button.id == "deny" or button.style == "danger":
        return "denied"
    return "approved"


@dataclass(frozen=True)
class Card:
    """What settling needs to know of one approval, as the store holds it."""

    kind: str
    status: str  # "pending" until settled
    deciders: tuple[str, ...]
    route: ev.Route  # where its card went
    buttons: tuple[ev.Button, ...]
    expires_at: float  # from then on nobody decides it: it expires


@dataclass(frozen=True)
class Settle:
    decision: Decision
    button: ev.Button


@dataclass(frozen=True)
class Unsettled:
    """Nothing is decided: the presser may not decide, it was settled already, it expired before the
    press or the choice (the store then settles it as expired), or no such button."""

    why: Literal["refused", "already", "expired", "bad_button"]


Outcome = Settle | Unsettled


def press(card: Card, clicker: str, click_route: ev.Route, button_id: str, at: float) -> Outcome:
    """A button pressed in a chat at `at` (when the click reached the bus, not when it is applied). Who
    may decide comes first, so a stranger learns nothing of the outcome; then a settled card stays
    settled; a press at or after the expiry decides nothing, even where the expiry was not yet applied
    (the timer not fired, the service down); then the button must be one of the card's."""
    if not may_decide(card.kind, card.deciders, card.route, clicker, click_route):
        return Unsettled("refused")
    if card.status != "pending":
        return Unsettled("already")
    if at >= card.expires_at:
        return Unsettled("expired")
    button = next((b for b in card.buttons if b.id == button_id), None)
    if button is None:
        return Unsettled("bad_button")
    return Settle(meaning(card.kind, button), button)


def choose(card: Card, choice: str, at: float) -> Outcome:
    """A choice made at the machine at `at`, whose owner may decide anything but an expired card: a button
    named by id, label or number; "approve" or "deny" means the card's first button that says so (a
    question has no such)."""
    if card.status != "pending":
        return Unsettled("already")
    if at >= card.expires_at:
        return Unsettled("expired")
    wanted = choice.strip().casefold()
    button = next(
        (b for i, b in enumerate(card.buttons, 1) if wanted in (b.id.casefold(), b.label.casefold(), str(i))), None
    )
    if button is None and wanted in ("approve", "deny") and card.kind != "question":
        meant = "approved" if wanted == "approve" else "denied"
        button = next((b for b in card.buttons if meaning(card.kind, b) == meant), None)
    if button is None:
        return Unsettled("bad_button")
    return Settle(meaning(card.kind, button), button)
