"""Pacing under a platform's rate limits, as booked times: no window of any limit over its count, and a
chat that must wait never holding up another."""

from __future__ import annotations

import itertools

from services.channels.pacing import Limit, Pacer
from services.channels.telegram import CHAT_LIMIT, GROUP_LIMIT, OVERALL_LIMIT, PACING_SLACK


def telegram() -> Pacer:
    return Pacer(CHAT_LIMIT, GROUP_LIMIT, OVERALL_LIMIT, slack=PACING_SLACK)


def most_in_a_window(times: list[float], per: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times if start <= t < start + per) for start in times)


def test_a_burst_into_one_private_chat_goes_a_second_and_its_slack_apart() -> None:
    pacer = telegram()
    booked = [pacer.reserve("42", group=False, now=0.0) for _ in range(4)]
    assert [round(b, 6) for b in booked] == [0.0, 1.2, 2.4, 3.6]


def test_a_burst_into_a_group_keeps_to_twenty_a_minute() -> None:
    pacer = telegram()
    booked = [pacer.reserve("-100", group=True, now=0.0) for _ in range(25)]
    assert most_in_a_window(booked, 60.0) == 20
    assert booked[20] - booked[0] >= 60.0  # the 21st waits for the first to leave the minute
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(booked))


def test_a_chat_that_must_wait_does_not_hold_up_another_chat() -> None:
    pacer = telegram()
    for _ in range(5):
        pacer.reserve("-100", group=True, now=0.0)
    assert pacer.reserve("7", group=False, now=0.0) < 0.1


def test_many_chats_at_once_are_spread_to_thirty_a_second_overall() -> None:
    pacer = telegram()
    booked = [pacer.reserve(str(chat), group=False, now=0.0) for chat in range(100)]
    assert most_in_a_window(booked, 1.0) <= 30
    assert max(booked) < 100 / 30 * 1.3  # spread, not queued behind each other's chats


def test_once_the_windows_have_passed_nothing_waits_and_nothing_is_remembered() -> None:
    pacer = Pacer(Limit(1, 1.0), Limit(20, 60.0), Limit(30, 1.0))
    for chat in range(50):
        pacer.reserve(str(-chat), group=True, now=0.0)
    assert pacer.reserve("-1", group=True, now=120.0) == 120.0
    assert len(pacer._chats) == 1 and len(pacer._all) == 1
