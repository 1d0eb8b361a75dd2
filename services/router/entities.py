"""The router's vocabulary: engage modes, policies, roles and session modes, and the names it accepts."""

from __future__ import annotations

import re
from typing import get_args

from clawden.bus.ctl import names
from clawden.bus.ctl.router import ALWAYS as ALWAYS
from clawden.bus.ctl.router import EngageMode as EngageMode
from clawden.bus.ctl.router import IgnoredPolicy as IgnoredPolicy
from clawden.bus.ctl.router import RoleName as RoleName
from clawden.bus.ctl.router import SenderScope as SenderScope
from clawden.bus.ctl.router import SessionMode as SessionMode
from clawden.bus.ctl.router import UnknownSenderPolicy as UnknownSenderPolicy
from clawden.bus.events import AGENT_CHANNEL

ENGAGE_MODES: tuple[str, ...] = get_args(EngageMode)
SENDER_SCOPES: tuple[str, ...] = get_args(SenderScope)
IGNORED_POLICIES: tuple[str, ...] = get_args(IgnoredPolicy)
SESSION_MODES: tuple[str, ...] = get_args(SessionMode)
POLICIES: tuple[str, ...] = get_args(UnknownSenderPolicy)
ROLES: tuple[str, ...] = get_args(RoleName)

# A messaging group whose chat id is this stands for every chat of its channel that has no row of
# its own: its wirings apply there, and its policy is inherited.
ALL_CHATS = "*"
TERMINAL_CHANNEL = "local"  # `clawden chat`: the machine owner's own terminal

# Agent group names become folder names, container labels and gateway socket directories.
_GROUP_NAME = names.GROUP_NAME
_USER_ID = names.USER_ID
_CHANNEL = names.CHANNEL


class InvalidName(ValueError):
    """A name the router refuses, said in words a person can act on."""


def group_name(name: str) -> str:
    if not _GROUP_NAME.match(name):
        raise InvalidName(
            f"agent group name {name!r}: use 1-40 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    return name


def channel_name(name: str) -> str:
    if not _CHANNEL.match(name):
        raise InvalidName(f"channel {name!r}: use letters, digits, '-' or '_'")
    return name


def user_id(value: str) -> str:
    if not _USER_ID.match(value):
        raise InvalidName(f"user {value!r}: users are platform identities like telegram:12345")
    if value.startswith(f"{AGENT_CHANNEL}:"):
        # What one agent relays to another comes from `agent:<group>`: never a person, so never a member,
        # admin or owner, and never an approver.
        raise InvalidName(f"user {value!r} is an agent group speaking to another; only people hold roles")
    return value


def user_id_of(channel: str, sender_id: str) -> str:
    """The user a sender is: bridges usually send `<channel>:<handle>`; a bare handle gets the prefix,
    so the same number on two platforms is never one person."""
    return sender_id if sender_id.startswith(f"{channel}:") else f"{channel}:{sender_id}"


def pattern(value: str) -> str:
    """An engage pattern must compile; a bad one is refused when written, not discovered per message."""
    try:
        re.compile(value)
    except re.error as exc:
        raise InvalidName(f"engage pattern {value!r} is not a regular expression: {exc}") from None
    return value
