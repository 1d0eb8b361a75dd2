"""A service's clock: what time it is, and a sleep measured on that time, in one object a service takes
as a parameter, so a test moves time (tests/fakes/clock.py) instead of waiting for it."""

from __future__ import annotations

import asyncio
import time

from clawden.runtime import sleep_unless_stopping


class Clock:
    """The real one: wall time (`time.time`), slept on the event loop's own timer."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float, stopping: asyncio.Event, *wakers: asyncio.Event) -> bool:
        """Sleep `seconds` of this clock's time, ended early by `stopping` or a waker; False once stopping."""
        return await sleep_unless_stopping(stopping, seconds, *wakers)
