"""The one "sleep until stopping" wait: a periodic chore sleeps its interval, and a stopping service (or
news the chore waits for) ends the sleep at once."""

from __future__ import annotations

import asyncio

from clawden.runtime import sleep_unless_stopping

LONG = 3600.0  # an interval no test waits out: only a signal can end the sleep in time


async def test_a_service_stopping_mid_sleep_ends_it_at_once_and_says_stop() -> None:
    stopping = asyncio.Event()
    sleeping = asyncio.create_task(sleep_unless_stopping(stopping, LONG))
    await asyncio.sleep(0)  # the sleep has begun
    stopping.set()
    assert await asyncio.wait_for(sleeping, 10) is False


async def test_a_service_already_stopping_does_not_sleep() -> None:
    stopping = asyncio.Event()
    stopping.set()
    assert await asyncio.wait_for(sleep_unless_stopping(stopping, LONG), 10) is False


async def test_a_waker_ends_the_sleep_and_the_chore_goes_on() -> None:
    stopping, changed = asyncio.Event(), asyncio.Event()
    sleeping = asyncio.create_task(sleep_unless_stopping(stopping, LONG, changed))
    await asyncio.sleep(0)
    changed.set()
    assert await asyncio.wait_for(sleeping, 10) is True


async def test_a_sleep_that_runs_out_says_go_on_and_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    assert await sleep_unless_stopping(asyncio.Event(), 0.01, asyncio.Event()) is True
    await asyncio.sleep(0)  # let the cancelled waits finish
    assert asyncio.all_tasks() == before
