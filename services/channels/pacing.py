"""Pacing a bridge's sends under its platform's rate limits: when the next message into a chat may go.

A rate, not a rule of correctness: a send that goes too fast anyway is answered with a rate limit,
which delivery waits out and retries. Pure: the clock comes in, the wait goes out.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    count: int  # at most this many messages
    per: float  # in any this many seconds


class Pacer:
    """Books a time for each message so that none of the limits is exceeded: one chat's, a group chat's
    (on top), and the bot's overall. A chat that must wait never holds up another chat. `slack` seconds
    are added to each window, so that jitter between this clock and the platform's does not tip a send
    over the limit."""

    def __init__(
        self, chat: Limit, group: Limit | None = None, overall: Limit | None = None, *, slack: float = 0.0
    ) -> None:
        self.chat = chat
        self.group = group
        self.overall = overall
        self.slack = slack
        self._chats: dict[str, deque[float]] = {}
        self._all: list[float] = []  # every booked time, sorted (chats book out of order)

    def reserve(self, chat: str, *, group: bool, now: float) -> float:
        """The time (>= now) the next message into `chat` may go; it is booked for that message."""
        self._forget(now)
        booked = self._chats.setdefault(chat, deque())
        at = now
        for limit in (self.chat, self.group if group else None):
            if limit is not None and len(booked) >= limit.count:
                # A chat's bookings only grow, so the window ending at `at` holds the last `count` of them.
                at = max(at, booked[-limit.count] + limit.per + self.slack)
        if self.overall is not None:
            at = self._overall_slot(at, self.overall)
            bisect.insort(self._all, at)
        booked.append(at)
        return at

    def _overall_slot(self, at: float, limit: Limit) -> float:
        """The first time from `at` that keeps every window of the overall limit within its count; bookings
        spaced evenly (count per `per`), so a burst from many chats is spread, not refused."""
        gap = (limit.per + self.slack) / limit.count
        i = bisect.bisect_left(self._all, at - gap)
        while i < len(self._all) and self._all[i] < at + gap:
            at = max(at, self._all[i] + gap)
            i += 1
        return at

    def _forget(self, now: float) -> None:
        keep = max(self.chat.per, self.group.per if self.group else 0.0) + self.slack
        for chat, booked in list(self._chats.items()):
            while booked and booked[0] < now - keep:
                booked.popleft()
            if not booked:
                del self._chats[chat]
        if self.overall is not None:
            del self._all[: bisect.bisect_left(self._all, now - self.overall.per - self.slack)]
