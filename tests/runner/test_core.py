"""The runner's pure decisions as tables: slots and the queue, failed starts (their backoff is the kernel's,
tests/runtime/test_backoff.py), idle and hung."""

from __future__ import annotations

import pytest

from services.runner import core
from services.runner.core import Holding, Queued

NOTICE = 30.0


@pytest.mark.parametrize(
    ("queue", "live", "cap", "making_room", "start", "tell", "make_room"),
    [
        # Free slots go in arrival order.
        ([Queued("a", 0), Queued("b", 1), Queued("c", 95)], 0, 2, False, ["a", "b"], [], True),
        ([Queued("a", 0), Queued("b", 1), Queued("c", 2)], 0, 2, False, ["a", "b"], ["c"], True),
        ([Queued("a", 0)], 1, 2, False, ["a"], [], False),
        # A session in its backoff keeps its place but does not start, and does not ask for room.
        ([Queued("a", 0, not_before=150), Queued("b", 1)], 0, 1, False, ["b"], [], False),
        # Full: whoever waited past the notice is told once; someone must make room, unless already asked.
        ([Queued("a", 0), Queued("b", 90)], 3, 3, False, [], ["a"], True),
        ([Queued("a", 0, told=True)], 3, 3, False, [], [], True),
        ([Queued("a", 0)], 3, 3, True, [], ["a"], False),
        # Nobody waiting: nothing to do.
        ([], 3, 3, False, [], [], False),
        # Over the cap (a group setting lowered it): nobody starts.
        ([Queued("a", 99)], 5, 3, False, [], [], True),
    ],
)
def test_dispatch(
    queue: list[Queued], live: int, cap: int, making_room: bool, start: list[str], tell: list[str], make_room: bool
) -> None:
    plan = core.dispatch(queue, live, cap, now=100.0, notice_after=NOTICE, making_room=making_room)
    assert (plan.start, plan.tell, plan.make_room) == (start, tell, make_room)


@pytest.mark.parametrize(
    ("holding", "queue", "drained"),
    [
        # Someone waited past the notice: the container that has held its slot longest finishes and leaves.
        ([Holding("x", 50), Holding("y", 10)], [Queued("a", 60)], "y"),
        # Not that long yet, or only in its backoff: nobody is asked.
        ([Holding("x", 50)], [Queued("a", 80)], None),
        ([Holding("x", 50)], [Queued("a", 0, not_before=150)], None),
        # One leaving already (stopping, draining): its slot is about to free; one at a time.
        ([Holding("x", 50, leaving=True), Holding("y", 10)], [Queued("a", 0)], None),
        # Nobody waits, or nobody holds a slot (all starting: their places are the dispatcher's).
        ([Holding("x", 50)], [], None),
        ([], [Queued("a", 0)], None),
    ],
)
def test_a_container_is_drained_for_a_chat_that_waited_past_the_notice(
    holding: list[Holding], queue: list[Queued], drained: str | None
) -> None:
    assert core.to_drain(holding, queue, now=100.0, patience=NOTICE) == drained


@pytest.mark.parametrize(
    ("failures", "image_missing", "expected"),
    [
        (1, False, core.StartFailed(give_up=False, retry_at=102.0)),
        (4, False, core.StartFailed(give_up=False, retry_at=116.0)),
        (5, False, core.StartFailed(give_up=True, retry_at=None)),  # the fifth failure in a row
        (1, True, core.StartFailed(give_up=True, retry_at=None)),  # no image: retrying will not build one
    ],
)
def test_a_failed_start(failures: int, image_missing: bool, expected: core.StartFailed) -> None:
    assert core.start_failed(failures, 5, image_missing, now=100.0) == expected


@pytest.mark.parametrize(("tool_timeout", "allowed"), [(None, 600.0), (60.0, 600.0), (3600.0, 3630.0)])
def test_a_declared_long_tool_call_extends_the_silence_allowed(tool_timeout: float | None, allowed: float) -> None:
    assert core.allowed_silence(600.0, tool_timeout) == allowed


@pytest.mark.parametrize(
    ("busy", "idle_for", "heartbeat_age", "since_wake", "state"),
    [
        (False, 10.0, 0.0, 10.0, "quiet"),
        (False, 1801.0, 0.0, 1801.0, "idle"),
        (True, 5000.0, 10.0, 5000.0, "working"),  # a long turn with a live heartbeat
        (True, 0.0, 700.0, 700.0, "hung"),
        # A heartbeat older than the latest message counts only from that message.
        (True, 0.0, 5000.0, 20.0, "working"),
        (True, 0.0, 601.0, 601.0, "hung"),
        (True, 0.0, 600.0, 600.0, "working"),  # exactly the allowance is still allowed
    ],
)
def test_health(busy: bool, idle_for: float, heartbeat_age: float, since_wake: float, state: str) -> None:
    assert (
        core.health(
            busy=busy,
            idle_for=idle_for,
            idle_timeout=1800.0,
            heartbeat_age=heartbeat_age,
            since_wake=since_wake,
            allowed=600.0,
        )
        == state
    )
