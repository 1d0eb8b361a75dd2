"""A clock that moves only when a test says so: a service's sleep on it ends when `advance` reaches its
deadline (or a waker, or stopping, ends it first), so an hour passes at once and nothing waits on a timer."""

from __future__ import annotations

import asyncio

from clawden.clock import Clock
from clawden.runtime import sleep_unless_stopping

SAFETY = 3600.0  # real seconds between two looks at the time when nothing moved it: never the trigger


class FakeClock(Clock):
    def __init__(self, start: float) -> None:
        self._now = start
        self._moved = asyncio.Event()
        self.sleeping = asyncio.Event()  # set while someone sleeps on this clock: a test may then advance

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._moved.set()

    async def sleep(self, seconds: float, stopping: asyncio.Event, *wakers: asyncio.Event) -> bool:
        deadline = self._now + seconds
        try:
            while not stopping.is_set() and self._now < deadline and not any(w.is_set() for w in wakers):
                self._moved.clear()
                self.sleeping.set()
                await sleep_unless_stopping(stopping, SAFETY, self._moved, *wakers)
        finally:
            self.sleeping.clear()
        return not stopping.is_set()
