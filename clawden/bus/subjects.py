"""The NATS subject tree. Services publish only to fully specified subjects built here."""

from __future__ import annotations

import base64
import hashlib
import re
import zlib

PREFIX = "clawden"
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN = re.compile(TOKEN_PATTERN)


def token(value: str) -> str:
    """A subject token from a name we chose (channel, runner, service); never from user text."""
    if not _TOKEN.match(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def inbound(channel: str) -> str:
    return f"{PREFIX}.inbound.{token(channel)}"


# A bridge takes its outbound work from this many lanes, one durable each with one message in flight:
# a chat's events all land in one lane, so they leave in order, while a chat the platform holds back
# (a 30-40 s rate limit) stalls only the chats that share its lane (1 in 8), not all of them. More
# lanes cost one durable and one open pull each; 8 keeps `clawden status` readable. Changing it moves
# chats between lanes, which may reorder what is in flight at the switch: it is part of the contract.
OUTBOUND_LANES = 8


def lane(chat_id: str) -> int:
    """The chat's lane: crc32, stable across processes, machines and Python versions (hash() is salted)."""
    return zlib.crc32(chat_id.encode()) % OUTBOUND_LANES


def outbound(channel: str, chat_id: str) -> str:
    """Where an event for this chat goes: its channel's lane for the chat."""
    return outbound_lane(channel, lane(chat_id))


def outbound_lane(channel: str, lane: int) -> str:
    if not 0 <= lane < OUTBOUND_LANES:
        raise ValueError(f"no outbound lane {lane}")
    return f"{PREFIX}.outbound.{token(channel)}.{lane}"


def outbound_all(channel: str) -> str:
    """Every lane of a channel, for a reader of the whole channel (the terminal)."""
    return f"{PREFIX}.outbound.{token(channel)}.>"


def webhook(channel: str) -> str:
    """Where the webhook front door puts each verified delivery for this channel's bridge."""
    return f"{PREFIX}.webhook.{token(channel)}"


def receipt(channel: str) -> str:
    return f"{PREFIX}.receipt.{token(channel)}"


def wake(runner: str) -> str:
    return f"{PREFIX}.wake.{token(runner)}"


def placement(session_id: str) -> str:
    """Where the router records which runner a session is on (`SessionPlaced`; the stream keeps the last)."""
    return f"{PREFIX}.placement.{token(session_id)}"


def sent(channel: str, outbound_id: str, part: int) -> str:
    """Where a bridge's instances record one part of one outbound message (the shared sent-log,
    `clawden/bus/sentlog.py`). An outbound id is any text, so the subject names its sha256 instead."""
    if part < 0:
        raise ValueError(f"no part {part}")
    digest = base64.urlsafe_b64encode(hashlib.sha256(outbound_id.encode()).digest()).decode().rstrip("=")
    return f"{PREFIX}.sent.{token(channel)}.{digest}.{part:d}"


def sent_note(channel: str, name: str) -> str:
    """Where a bridge's instances share one named fact beside the sent-log (`sentlog.SharedNotes`): the sha256 of
    the name, after a `note` token no part's subject has (theirs is a digest, then the part number)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(name.encode()).digest()).decode().rstrip("=")
    return f"{PREFIX}.sent.{token(channel)}.note.{digest}"


def sent_all(channel: str) -> str:
    """Every record of one channel's shared sent-log: what its bridge may write and read."""
    return f"{PREFIX}.sent.{token(channel)}.>"


def typing_off(channel: str) -> str:
    """Where an instance of a bridge tells its twins that "typing…" in a chat is over (`TypingOff`, core NATS)."""
    return f"{PREFIX}.bridge.{token(channel)}.typing_off"


def task(op: str) -> str:
    return f"{PREFIX}.task.{token(op)}"


# A scheduled task's run that is due (`TaskDue`), from the scheduler to the router, which alone knows where the
# session is now: it wakes it there. Outside `clawden.task.>`, which runners publish and the scheduler reads.
TASK_DUE = f"{PREFIX}.due"


APPROVAL_REQUEST = f"{PREFIX}.approval.request"


# A card click the router forwards to the approvals service (the router owns inbound).
APPROVAL_CLICK = f"{PREFIX}.approval.click"


def approval_decision(approval_id: str) -> str:
    return f"{PREFIX}.approval.decision.{token(approval_id)}"


def event(service: str, kind: str) -> str:
    return f"{PREFIX}.event.{token(service)}.{token(kind)}"


def ctl(service: str, verb: str) -> str:
    return f"{PREFIX}.ctl.{token(service)}.{token(verb)}"


ALL_INBOUND = f"{PREFIX}.inbound.>"
ALL_OUTBOUND = f"{PREFIX}.outbound.>"  # every channel's lanes
ALL_RECEIPTS = f"{PREFIX}.receipt.>"
ALL_WEBHOOKS = f"{PREFIX}.webhook.>"
ALL_WAKES = f"{PREFIX}.wake.>"
ALL_PLACEMENTS = f"{PREFIX}.placement.*"
ALL_TASKS = f"{PREFIX}.task.>"
ALL_APPROVALS = f"{PREFIX}.approval.>"
ALL_EVENTS = f"{PREFIX}.event.>"
ALL_SENT = f"{PREFIX}.sent.>"


def heartbeat(runner: str) -> str:
    """Where a runner says, every few seconds on core NATS (no stream keeps it), that it lives and how busy it is."""
    return f"{PREFIX}.runner.heartbeat.{token(runner)}"


ALL_HEARTBEATS = f"{PREFIX}.runner.heartbeat.*"
