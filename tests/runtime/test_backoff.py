"""The one backoff: doubling from a base, up to a cap, as each of its users sets it."""

from __future__ import annotations

import pytest

from clawden.backoff import backoff


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "delay"),
    [
        # A session's failed starts and crashes (the runner): 2 s, 4 s … 5 minutes.
        (1, 1.0, 300.0, 2.0),
        (2, 1.0, 300.0, 4.0),
        (5, 1.0, 300.0, 32.0),
        (8, 1.0, 300.0, 256.0),
        (9, 1.0, 300.0, 300.0),
        (40, 1.0, 300.0, 300.0),
        # A redelivered message, by its delivery count: 1 s, 2 s … 30 s.
        (1, 0.5, 30.0, 1.0),
        (2, 0.5, 30.0, 2.0),
        (6, 0.5, 30.0, 30.0),
        # No failure yet waits the base; a count past any float's range still waits the cap.
        (0, 0.5, 30.0, 0.5),
        (-1, 0.5, 30.0, 0.5),
        (10_000, 1.0, 30.0, 30.0),
    ],
)
def test_backoff_doubles_from_its_base_up_to_its_cap(attempt: int, base: float, cap: float, delay: float) -> None:
    assert backoff(attempt, base=base, cap=cap) == delay
