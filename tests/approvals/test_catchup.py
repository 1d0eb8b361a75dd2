"""When a start has caught up with the clicks left on the bus, as tables over the durable's sequence numbers."""

from __future__ import annotations

import pytest

from services.approvals.catchup import CatchUp

# The stream's last sequence at the start is 20; the durable had delivered up to 10, two of those (4 and 7) unacked.


def start() -> CatchUp:
    return CatchUp(stored=20, delivered=10, unacked=2)


@pytest.mark.parametrize(
    ("handled", "given_up", "now", "done"),
    [
        # nothing handled yet: the new clicks are still to come, and so are the two unacked
        ((), (), (3, 13, 3), False),
        # the new ones all handled (the last delivered, none left), the unacked not come again yet
        ((13, 15), (), (0, 15, 3), False),
        # one of the unacked came again and failed: it counts once, however often it comes
        ((13, 15, 4, 4), (), (0, 15, 3), False),
        # both came again, each handled once (failed or not): caught up
        ((13, 15, 4, 7), (), (0, 15, 6), True),
        # one came again, JetStream gave up on the other: nothing left to wait for
        ((13, 15, 4), (7,), (0, 15, 3), True),
        # a give-up on a new click (already handled here) is no unacked one
        ((13, 15, 4), (15,), (0, 15, 3), False),
        # nothing up to `delivered` is unacked any more (a twin acked them): caught up
        ((13, 15), (), (0, 15, 15), True),
        # the last delivered (15) is not handled yet: it may be in hand still
        ((13, 4, 7), (), (0, 15, 13), False),
        # nor handled, but acked: it did not decode, and was terminated
        ((13, 4, 7), (), (0, 15, 15), True),
        # clicks still come, but one stored after the start was handled: all before it were
        ((13, 15, 21, 4, 7), (), (5, 26, 7), True),
        # more clicks left to deliver, none after the start handled yet
        ((13, 15, 4, 7), (), (2, 15, 15), False),
    ],
)
def test_caught_up_once_every_click_owed_was_handled_once(
    handled: tuple[int, ...], given_up: tuple[int, ...], now: tuple[int, int, int], done: bool
) -> None:
    owed = start()
    for seq in handled:
        owed.handled(seq)
    for seq in given_up:
        owed.given_up(seq)
    assert owed.done(*now) is done


def test_a_start_with_nothing_owed_is_caught_up_at_once() -> None:
    assert CatchUp(stored=20, delivered=10, unacked=0).done(0, 10, 10)
    assert CatchUp(stored=0, delivered=0, unacked=0).done(0, 0, 0)  # a new durable on an empty stream
