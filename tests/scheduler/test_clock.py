"""The scheduler on a clock a test moves (and a machine it suspends): a run fires when the clock reaches its time, not
before and without anyone waiting for it, and late if the scheduler was awake but slow; real NATS and a real
scheduler.db around it."""

from __future__ import annotations

import asyncio
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from clawden.bus import ensure_streams, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import scheduler as api
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.scheduler.service import Scheduler
from services.scheduler.store import NewTask, Store
from tests.eventually import eventually
from tests.fakes.clock import FakeClock

START = datetime(2026, 1, 5, 7, 0, tzinfo=UTC).timestamp()


class Machine(FakeClock):
    """The clock of a machine a test can suspend: a suspend moves the wall time and the time asleep
    (`machine_slept`), and not the time awake, as closing a laptop's lid and opening it again does. The fake's
    timers run on wall time, so a suspend ends a wait at once, where a real timer (on the time awake) ends it
    later: what the scheduler then sees is the same, a little sooner."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.asleep = 0.0

    def suspend(self, seconds: float) -> None:
        self.asleep += seconds
        self.advance(seconds)

    def slept(self) -> float:
        return self.asleep

    async def moved(self, seconds: float, suspended: bool = False) -> None:
        """Move the clock (or suspend the machine) past the scheduler's wait, and wait until it has looked at the
        clock, done what was due and sleeps again."""
        self.sleeping.clear()
        (self.suspend if suspended else self.advance)(seconds)
        await asyncio.wait_for(self.sleeping.wait(), 10)


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


class Gate:
    """The scheduler's JetStream, with the server made slow or away for a while (a publish held until the test
    lets it go, or failing as it does while NATS is away); what gets through is the real server's."""

    def __init__(self, js: JetStreamContext, clock: FakeClock) -> None:
        self.js, self.clock = js, clock
        self.away_until = 0.0  # on the fake clock: every publish before this fails
        self.failures: asyncio.Queue[float] = asyncio.Queue()  # when each failed, on the fake clock
        self.hold_next = False
        self.held: asyncio.Future[str] = asyncio.get_running_loop().create_future()  # the held run's msg id
        self.release = asyncio.Event()

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> PubAck:
        if self.clock.now() < self.away_until:
            self.failures.put_nowait(self.clock.now())
            raise NatsTimeoutError
        if self.hold_next:
            self.hold_next = False
            self.held.set_result(kwargs["headers"][Header.MSG_ID])
            await self.release.wait()
        return await self.js.publish(subject, payload, **kwargs)


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


async def stored(nc: Client) -> list[str]:
    """The due runs the server holds (`task:<task id>:<instant>`): what reached it, whatever a listener has seen."""
    js = nc.jetstream()
    info = await js.stream_info("CLAWDEN_TASKS")
    if not info.state.messages:
        return []
    held = [await js.get_msg("CLAWDEN_TASKS", seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    return [(m.headers or {})[Header.MSG_ID] for m in held if m.subject == subjects.TASK_DUE]


class Running:
    """A scheduler process's life on a shared store and clock: started, then stopped as a restart does."""

    def __init__(self, nc: Client, tmp_path: Path, store: Store, clock: Machine, js: object = None) -> None:
        self.ctx = types.SimpleNamespace(
            js=js or nc.jetstream(), stopping=asyncio.Event(), config=Config(home=str(tmp_path))
        )
        self.scheduler = Scheduler(cast(ServiceContext, self.ctx), store, clock, clock.slept)
        self.firing = asyncio.create_task(self.scheduler.firing())

    async def stop(self) -> None:
        self.ctx.stopping.set()
        await asyncio.wait_for(self.firing, 10)


async def test_runs_fire_as_the_clock_reaches_them_and_not_before(nc: Client, tmp_path: Path) -> None:
    runs = await listen(nc)
    clock = Machine(START)
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
    clock = Machine(START)
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


async def test_a_run_due_while_nats_is_away_fires_once_it_is_back_whatever_its_catch_up_policy(
    nc: Client, tmp_path: Path
) -> None:
    await ensure_streams(nc.jetstream())
    clock = Machine(START)
    gate = Gate(nc.jetstream(), clock)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-hourly", "every 1h", catch_up="skip"), START)
    running = Running(nc, tmp_path, store, clock, gate)
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        gate.away_until = START + 3600 + 90  # NATS is away from 08:00 for a minute and a half, longer than the grace
        clock.advance(3600)
        for tried in (0, 30, 60):  # tried at 08:00, 08:00:30 and 08:01:00, and failed each time
            assert await asyncio.wait_for(gate.failures.get(), 10) == START + 3600 + tried
            await asyncio.wait_for(clock.sleeping.wait(), 10)
            clock.advance(30)
        # 08:01:30: NATS is back. The scheduler was running all along: the run it decided at 08:00 is not late.
        logged = await eventually(lambda: store.run(store.runs, "t-hourly"), message="the run is logged")
        assert [(r["scheduled_at"], r["outcome"]) for r in logged] == [(int(START) + 3600, "fired")]
        assert await stored(nc) == ["task:t-hourly:2026-01-05T08:00:00Z"]
    finally:
        await running.stop()
        await store.stop()


async def test_a_task_cancelled_while_another_runs_publish_waits_is_not_fired(nc: Client, tmp_path: Path) -> None:
    runs = await listen(nc)
    clock = Machine(START)
    gate = Gate(nc.jetstream(), clock)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-a", "2026-01-05T07:01"), START)
    await store.run(store.create, task("t-b", "2026-01-05T07:01"), START)
    running = Running(nc, tmp_path, store, clock, gate)
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        gate.hold_next = True  # NATS is slow: the first run's publish waits
        clock.advance(60)
        first = (await asyncio.wait_for(gate.held, 10)).split(":")[1]
        other = "t-b" if first == "t-a" else "t-a"
        # `clawden tasks cancel` for the other one, answered while the first one's publish is still waiting.
        answer = await running.scheduler.ctl_status("cancel")(api.TaskRef(task_id=other))
        assert answer.status == "cancelled"
        gate.release.set()
        await eventually(lambda: runs, message="the first run goes out")
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # done with what was due
        assert await stored(nc) == [f"task:{first}:2026-01-05T07:01:00Z"], (
            "a task cancelled, and told so, fires no more"
        )
        assert await store.run(store.runs, other) == []
    finally:
        await running.stop()
        await store.stop()


def at(run: dict[str, Any]) -> Any:
    return run["scheduled_at"]


async def test_a_run_starved_for_five_minutes_past_its_time_fires_late_whatever_its_policy(
    nc: Client, tmp_path: Path
) -> None:
    runs = await listen(nc)
    clock = Machine(START)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-skip", "0 8 * * *", catch_up="skip"), START)
    running = Running(nc, tmp_path, store, clock)
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        await clock.moved(3590)  # 07:59:50: nothing is due yet
        await clock.moved(310)  # awake all along, but it gets the CPU (or its disk) back only at 08:05
        logged = await store.run(store.runs, "t-skip")
        assert [(r["scheduled_at"], r["outcome"]) for r in logged] == [(int(START) + 3600, "fired")]
        assert await stored(nc) == ["task:t-skip:2026-01-05T08:00:00Z"]
        await eventually(lambda: runs, message="the router hears of it")
        assert [(r.text, r.at) for r in runs] == [("t-skip is due", START + 3600)]
    finally:
        await running.stop()
        await store.stop()


async def test_a_run_due_while_the_machine_slept_is_skipped_however_soon_it_woke(nc: Client, tmp_path: Path) -> None:
    await ensure_streams(nc.jetstream())
    clock = Machine(START)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-skip", "0 8 * * *", catch_up="skip"), START)
    running = Running(nc, tmp_path, store, clock)
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        await clock.moved(3590)  # 07:59:50: nothing is due yet
        await clock.moved(40, suspended=True)  # the lid is closed until 08:00:30
        logged = await store.run(store.runs, "t-skip")
        assert [(r["scheduled_at"], r["outcome"]) for r in logged] == [(int(START) + 3600, "skipped")]
        assert await stored(nc) == []
        daily = await store.run(store.get, "t-skip")
        assert daily is not None and daily.next_run == START + 3600 + 86400, "tomorrow's run is next"
    finally:
        await running.stop()
        await store.stop()


async def test_a_run_due_while_the_scheduler_was_down_is_skipped_however_quick_the_restart(
    nc: Client, tmp_path: Path
) -> None:
    await ensure_streams(nc.jetstream())
    clock = Machine(START)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-skip", "0 8 * * *", catch_up="skip"), START)
    try:
        first = Running(nc, tmp_path, store, clock)
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        await clock.moved(3590)  # 07:59:50: nothing is due yet
        await first.stop()
        clock.advance(30)  # down from 07:59:50 to 08:00:20
        second = Running(nc, tmp_path, store, clock)
        await asyncio.wait_for(clock.sleeping.wait(), 10)  # it looked at the clock and did what was due
        await second.stop()
        logged = await store.run(store.runs, "t-skip")
        assert [(r["scheduled_at"], r["outcome"]) for r in logged] == [(int(START) + 3600, "skipped")]
        assert await stored(nc) == []
    finally:
        await store.stop()


async def test_runs_judged_when_first_seen_due_keep_that_judgement_while_nats_is_away(
    nc: Client, tmp_path: Path
) -> None:
    """Seen due after a sleep, every run came due in it: the latest is caught up, and NATS is away for its first
    publish. Judged again at the retry, every run would look come due while the scheduler was awake (before its last
    look), and the latest would count as fired on time."""
    await ensure_streams(nc.jetstream())
    clock = Machine(START)
    gate = Gate(nc.jetstream(), clock)
    store = await Store.start(tmp_path / "scheduler.db")
    await store.run(store.create, task("t-hold", "2026-01-05T07:01"), START)
    await store.run(store.create, task("t-half", "every 30m"), START)
    running = Running(nc, tmp_path, store, clock, gate)
    try:
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        gate.hold_next = True  # the 07:01 run's publish waits: the scheduler does not look at the clock meanwhile
        clock.advance(60)
        await asyncio.wait_for(gate.held, 10)
        clock.advance(60)  # 07:02
        clock.suspend(2 * 3600)  # asleep until 09:02: the 07:30 to 09:00 runs come due in the sleep
        gate.away_until = clock.now() + 30  # and NATS is away for the first try of what is due now
        gate.release.set()
        assert await asyncio.wait_for(gate.failures.get(), 10) == clock.now()
        await asyncio.wait_for(clock.sleeping.wait(), 10)
        clock.advance(30)  # NATS is back
        logged = await eventually(
            lambda: store.run(store.runs, "t-half"), message="the runs are handed over and logged"
        )
        half_hour = [int(START) + 1800 * n for n in range(1, 5)]
        assert sorted((r["scheduled_at"], r["outcome"]) for r in logged) == [
            *[(s, "missed") for s in half_hour[:3]],
            (half_hour[3], "caught_up"),
        ]
        assert sorted(await stored(nc)) == ["task:t-half:2026-01-05T09:00:00Z", "task:t-hold:2026-01-05T07:01:00Z"]
    finally:
        await running.stop()
        await store.stop()
