"""The runner's decisions, with no I/O: which waiting sessions start, who is told they wait, when a
failed start or a crash is tried again, and whether a running container is idle or hung.

Everything arrives as plain data (the clock included) and leaves as a plan the service carries out
with Docker and SQLite, in the spirit of h11 and of the router's `engage.decide`; tested as tables in
tests/runner/test_core.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from clawden.backoff import backoff

MAX_BACKOFF = 300.0  # seconds between two attempts of one session, at most
TOOL_GRACE = 30.0  # seconds past a declared tool timeout before its silence counts


@dataclass(frozen=True)
class Queued:
    """A session waiting for a slot, as the dispatcher sees it."""

    session_id: str
    since: float  # when it started waiting (monotonic seconds)
    not_before: float = 0.0  # its backoff: not started before then
    told: bool = False  # its chat has been told it waits


@dataclass
class Dispatch:
    start: list[str] = field(default_factory=list)  # in arrival order; each takes a slot
    tell: list[str] = field(default_factory=list)  # waited longer than the notice: say so once
    make_room: bool = False  # every slot is taken and someone waits: ask an idle container to leave


def dispatch(
    queue: Iterable[Queued], live: int, cap: int, now: float, notice_after: float, making_room: bool
) -> Dispatch:
    """What the dispatcher does this round, with `live` slots taken out of `cap`."""
    plan = Dispatch()
    waiting = False
    for q in queue:
        if q.not_before > now:
            continue
        if live < cap:
            plan.start.append(q.session_id)
            live += 1
            continue
        waiting = True
        if not q.told and now - q.since > notice_after:
            plan.tell.append(q.session_id)
    plan.make_room = waiting and not making_room
    return plan


@dataclass(frozen=True)
class Holding:
    """A session whose container holds a slot, as `to_drain` sees it."""

    session_id: str
    since: float  # when it took the slot (monotonic seconds)
    leaving: bool = False  # stopping or draining already


def to_drain(holding: Iterable[Holding], queue: Iterable[Queued], now: float, patience: float) -> str | None:
    """Every slot is taken and no container is idle (chats that write again the moment they are answered, such as
    agents talking to each other, never leave one): once a chat has waited past `patience` for a slot, the container
    that has held its slot longest is asked to finish what it was given and leave. One at a time: None while one
    is leaving already, or while nobody has waited that long."""
    if not any(q.not_before <= now and now - q.since > patience for q in queue):
        return None
    held = list(holding)
    if not held or any(h.leaving for h in held):
        return None
    return min(held, key=lambda h: h.since).session_id


@dataclass(frozen=True)
class StartFailed:
    give_up: bool  # fail the session's pending messages with the reason
    retry_at: float | None  # else queue it again, not before then


def start_failed(failures: int, attempts: int, image_missing: bool, now: float) -> StartFailed:
    """After the `failures`-th failed start in a row: a missing image will not appear by itself."""
    if image_missing or failures >= attempts:
        return StartFailed(give_up=True, retry_at=None)
    return StartFailed(give_up=False, retry_at=now + backoff(failures, cap=MAX_BACKOFF))


def allowed_silence(hang_timeout: float, tool_timeout: float | None) -> float:
    """Seconds of silence allowed right now: a declared long tool call (Bash with a long timeout) is not
    a hang."""
    if tool_timeout is None:
        return hang_timeout
    return max(hang_timeout, tool_timeout + TOOL_GRACE)


Health = Literal["working", "idle", "quiet", "hung"]


def health(
    *, busy: bool, idle_for: float, idle_timeout: float, heartbeat_age: float, since_wake: float, allowed: float
) -> Health:
    """A running container's state for the housekeeping round.

    - idle: nothing unanswered for longer than the group's idle timeout (stop it);
    - quiet: nothing unanswered, not long enough to stop;
    - hung: unanswered work and no sign of life for longer than allowed; an old heartbeat from before
      the latest message does not count against it (silence is measured from that message at most);
    - working: otherwise.
    """
    if not busy:
        return "idle" if idle_for > idle_timeout else "quiet"
    return "hung" if min(heartbeat_age, since_wake) > allowed else "working"
