"""The scheduler on a clock a test moves: a run fires when the clock reaches its time, not before and
without anyone waiting for it; real NATS and a real scheduler.db around it."""

from __future__ import annotations

import asyncio
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden.bus import ensure_streams, subjects
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.scheduler.service import Scheduler
from services.scheduler.store import NewTask, Store
from tests.eventually import eventually
from tests.fakes.clock import FakeClock

START = datetime(2026, 1, 5, 7, 0, tzinfo=UTC).timestamp()


def task(task_id: str, schedule: str) -> NewTask:
    return NewTask(
        id=task_id,
        agent_group="main",
        session_id="s-1",
        runner="local",
        channel="local",
        chat_id="kitchen",
        thread_id=None,
        prompt=f"{task_id} is due",
        schedule=schedule,
        timezone="UTC",
        catch_up="once",
        created_by="cli",
    )


async def test_runs_fire_as_the_clock_reaches_them_and_not_before(nc: Client, tmp_path: Path) -> None:
    await ensure_streams(nc.jetstream())
    wakes: list[ev.Wake] = []

    async def on_wake(msg: Msg) -> None:
        wake = ev.decode(msg.data)
        assert isinstance(wake, ev.Wake)
        wakes.append(wake)

    await nc.subscribe(subjects.wake("local"), cb=on_wake)
    clock = FakeClock(START)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-soon", "2026-01-05T07:01"), START)
    await store.run(store.create, task("t-daily", "0 8 * * *"), START)
    ctx = types.SimpleNamespace(js=nc.jetstream(), stopping=asyncio.Event(), config=Config(home=str(tmp_path)))
    scheduler = Scheduler(cast(ServiceContext, ctx), store, clock)
    firing = asyncio.create_task(scheduler.firing())
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # nothing is due at 07:00
        clock.advance(60)
        await eventually(lambda: wakes, message="the 07:01 run fires once the clock says 07:01")
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # and the scheduler sleeps again
        assert [w.message.text for w in wakes] == ["t-soon is due"], "08:00 is not here yet"
        clock.advance(3540)
        await eventually(lambda: len(wakes) == 2, message="the 08:00 run fires at 08:00")
        assert wakes[1].message.text == "t-daily is due" and wakes[1].message.sent_at == START + 3600
        daily = await store.run(store.get, "t-daily")
        assert daily is not None and daily.next_run == START + 3600 + 86400, "tomorrow's run is next"
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(firing, 10)
        await store.stop()
