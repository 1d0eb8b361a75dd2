"""The NATS subject tree. Services publish only to fully specified subjects built here."""

from __future__ import annotations

import re

PREFIX = "clawden"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def token(value: str) -> str:
    """A subject token from a name we chose (channel, runner, service); never from user text."""
    if not _TOKEN.match(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def inbound(channel: str) -> str:
    return f"{PREFIX}.inbound.{token(channel)}"


def outbound(channel: str) -> str:
    return f"{PREFIX}.outbound.{token(channel)}"


def receipt(channel: str) -> str:
    return f"{PREFIX}.receipt.{token(channel)}"


def wake(runner: str) -> str:
    return f"{PREFIX}.wake.{token(runner)}"


def task(op: str) -> str:
    return f"{PREFIX}.task.{token(op)}"


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
ALL_OUTBOUND = f"{PREFIX}.outbound.>"
ALL_RECEIPTS = f"{PREFIX}.receipt.>"
ALL_WAKES = f"{PREFIX}.wake.>"
ALL_TASKS = f"{PREFIX}.task.>"
ALL_APPROVALS = f"{PREFIX}.approval.>"
ALL_EVENTS = f"{PREFIX}.event.>"
