"""The scheduler on a clock a test moves: a run fires when the clock reaches its time, not before and
without anyone waiting for it; real NATS and a real scheduler.db around it."""

from __future__ import annotations

import asyncio
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

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


def task(task_id: str, schedule: str, catch_up: str = "once") -> NewTask:
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
        catch_up=catch_up,  # type: ignore[arg-type]
        created_by="cli",
    )


async def listen(nc: Client) -> list[ev.TaskDue]:
    """The runs the scheduler hands to the router, as they are published."""
    await ensure_streams(nc.jetstream())
    runs: list[ev.TaskDue] = []

    async def on_due(msg: Msg) -> None:
        run = ev.decode(msg.data)
        assert isinstance(run, ev.TaskDue)
        runs.append(run)

    await nc.subscribe(subjects.TASK_DUE, cb=on_due)
    return runs


class Running:
    """A scheduler process's life on a shared store and clock: started, then stopped as a restart does."""

    def __init__(self, nc: Client, tmp_path: Path, store: Store, clock: FakeClock) -> None:
        self.ctx = types.SimpleNamespace(js=nc.jetstream(), stopping=asyncio.Event(), config=Config(home=str(tmp_path)))
        self.firing = asyncio.create_task(Scheduler(cast(ServiceContext, self.ctx), store, clock).firing())

    async def stop(self) -> None:
        self.ctx.stopping.set()
        await asyncio.wait_for(self.firing, 10)


async def test_runs_fire_as_the_clock_reaches_them_and_not_before(nc: Client, tmp_path: Path) -> None:
    runs = await listen(nc)
    clock = FakeClock(START)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-soon", "2026-01-05T07:01"), START)
    await store.run(store.create, task("t-daily", "0 8 * * *"), START)
    running = Running(nc, tmp_path, store, clock)
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # nothing is due at 07:00
        clock.advance(60)
        await eventually(lambda: runs, message="the 07:01 run fires once the clock says 07:01")
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # and the scheduler sleeps again
        assert [r.text for r in runs] == ["t-soon is due"], "08:00 is not here yet"
        clock.advance(3540)
        await eventually(lambda: len(runs) == 2, message="the 08:00 run fires at 08:00")
        assert runs[1].text == "t-daily is due" and runs[1].at == START + 3600
        daily = await store.run(store.get, "t-daily")
        assert daily is not None and daily.next_run == START + 3600 + 86400, "tomorrow's run is next"
    finally:
        await running.stop()
        await store.stop()


async def test_a_restart_after_five_missed_runs_catches_up_as_each_policy_says(nc: Client, tmp_path: Path) -> None:
    runs = await listen(nc)
    clock = FakeClock(START)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-once", "every 1m"), START)
    await store.run(store.create, task("t-skip", "every 1m", catch_up="skip"), START)
    try:
        first = Running(nc, tmp_path, store, clock)
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        clock.advance(60)
        await eventually(lambda: len(runs) == 2, message="both fire at 07:01")
        await first.stop()
        # Down from 07:01 to 07:06:45: the runs of 07:02 to 07:06 pass unseen, the last one further back than
        # the grace of half a period, within which a run counts as on time.
        clock.advance(5 * 60 + 45)
        second = Running(nc, tmp_path, store, clock)
        await eventually(lambda: len(runs) == 3, message="the once-task catches up")
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # and nothing else is due before 07:07
        assert [(r.text, r.at) for r in runs[2:]] == [("t-once is due", START + 360)]
        clock.advance(15)
        await eventually(lambda: len(runs) == 5, message="regular runs resume at 07:07")
        await second.stop()
        outcomes = {
            task_id: [(r["scheduled_at"], r["outcome"]) for r in sorted(await store.run(store.runs, task_id), key=at)]
            for task_id in ("t-once", "t-skip")
        }
    finally:
        await store.stop()
    downtime = [int(START) + 60 * m for m in range(2, 7)]
    assert outcomes["t-once"] == [
        (int(START) + 60, "fired"),
        *[(s, "missed") for s in downtime[:-1]],
        (downtime[-1], "caught_up"),  # the most recent: what the task would say now
        (int(START) + 420, "fired"),
    ]
    assert outcomes["t-skip"] == [
        (int(START) + 60, "fired"),
        *[(s, "skipped") for s in downtime],
        (int(START) + 420, "fired"),
    ]


def at(run: dict[str, Any]) -> Any:
    return run["scheduled_at"]
