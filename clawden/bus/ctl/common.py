"""Verbs many serve: `ping` (every service, for `clawden status`) and a channel bridge's `capabilities`."""

from __future__ import annotations

from typing import Any, Literal

from clawden.bus.ctl.verb import ANY_BRIDGE, ANY_SERVICE, Nothing, Reply, declare


class Pong(Reply, frozen=True):
    service: str
    pid: int
    uptime: float  # seconds
    ready: bool
    stats: dict[str, Any]  # each service's own counters, by name
    verbs: list[str] = []  # the control verbs it has a handler for (`Verb.key`), so a test can hold it to the contract
    # What a ready service cannot do right now, in a person's words ("" when nothing), e.g. a bridge that cannot
    # reach its platform; `clawden status` then shows it degraded with this line. A default, so older replies decode.
    trouble: str = ""


class Capabilities(Reply, frozen=True, omit_defaults=True):
    """What a bridge's platform can do; the group fields only once the platform said (Telegram's privacy mode)."""

    channel: str
    max_text: int
    threads: bool
    edits: bool
    reactions: bool
    files: bool
    cards: bool
    typing: bool
    typing_interval: float
    max_file_bytes: int
    max_download_bytes: int
    idempotent_sends: bool
    ambiguous_resends: int
    dedupe_window: float = 0.0  # seconds after a send its key still makes the platform drop a repeat
    group_messages: Literal["all", "addressed"] | None = None
    group_note: str | None = None


PING = declare(ANY_SERVICE, "ping", Nothing, Pong)
CAPABILITIES = declare(ANY_BRIDGE, "capabilities", Nothing, Capabilities)
