"""The scheduler as a real process on real NATS: each due run handed to the router (`TaskDue`) on time, exactly
once, across restarts; pauses hold; bad operations are refused to the chat that asked; the CLI reads and changes
tasks. The router's side, the wake, is tests/router/test_task_runs.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import control, setup
from clawden.bus import connect, ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Verb
from clawden.bus.ctl import scheduler as sched
from clawden.config import load
from clawden.control import ControlError, Rep, Req
from tests.conftest import NatsServer
from tests.eventually import eventually

ROUTE = ev.Route(channel="local", chat_id="kitchen")
# The issue asks for a minute of on-time firing; CLAWDEN_SCHEDULER_SOAK shortens it for a quick loop.
SOAK = float(os.environ.get("CLAWDEN_SCHEDULER_SOAK", "60"))


@dataclass
class Fired:
    task_id: str
    scheduled: str
    received: float
    run: ev.TaskDue


@dataclass
class Bus:
    nc: Client
    home: Path
    nats_url: str
    runs: list[Fired] = field(default_factory=list)
    notices: list[ev.OutboundMessage] = field(default_factory=list)

    async def on_due(self, msg: Msg) -> None:
        run = ev.decode(msg.data)
        assert isinstance(run, ev.TaskDue)
        _, task_id, scheduled = (msg.headers or {})["Nats-Msg-Id"].split(":", 2)
        assert run.id == (msg.headers or {})["Nats-Msg-Id"]
        self.runs.append(Fired(task_id, scheduled, time.time(), run))

    async def on_outbound(self, msg: Msg) -> None:
        event = ev.decode(msg.data)
        assert isinstance(event, ev.OutboundMessage)
        self.notices.append(event)

    async def op(self, op: str, task_id: str, **fields: Any) -> None:
        request_id = uuid.uuid4().hex
        event = ev.TaskOp(
            op=op,  # type: ignore[arg-type]
            request_id=request_id,
            agent_group="main",
            task_id=task_id,
            session_id="s-kitchen",
            route=ROUTE,
            created_by="agent:main",
            **fields,
        )
        await publish(self.nc.jetstream(), subjects.task(op), event, msg_id=f"task:{request_id}")

    async def ctl(self, verb: Verb[Req, Rep], request: Req) -> Rep:
        return await control.ask(load(self.home, {"CLAWDEN_NATS_URL": self.nats_url}), verb, request)

    def fired(self, task_id: str) -> list[Fired]:
        return [f for f in self.runs if f.task_id == task_id]

    async def stored_at(self) -> dict[str, float]:
        """When each due run reached the server, by its message id (`task:<id>:<instant>`): the scheduler's own
        timing, not that of this test's process."""
        js = self.nc.jetstream()
        info = await js.stream_info("CLAWDEN_TASKS")
        stored = [
            await js.get_msg("CLAWDEN_TASKS", seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
        return {
            (m.headers or {})["Nats-Msg-Id"]: m.time.timestamp()
            for m in stored
            if m.time is not None and m.subject == subjects.TASK_DUE
        }


class Scheduler:
    """`clawden run scheduler`, as its systemd unit runs it."""

    def __init__(self, home: Path, nats_url: str) -> None:
        self.home = home
        # Tasks every second keep these tests short; a real install refuses intervals under a minute
        # unless a pre-check script gates them.
        self.env = dict(
            os.environ, CLAWDEN_HOME=str(home), CLAWDEN_NATS_URL=nats_url, CLAWDEN_SCHEDULER_MIN_INTERVAL="1"
        )
        self.log = home / "scheduler.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", "scheduler"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self, nc: Client) -> None:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while True:  # ready: its endpoints and consumers are up, not only the ping every service has
            try:
                ping = await nc.request(subjects.ctl("scheduler", "ping"), b"", timeout=0.5)
                if json.loads(ping.data)["ready"]:
                    return
                raise RuntimeError("not ready yet")
            except Exception:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, self.log.read_text()
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(20) == 0, self.log.read_text()


@pytest.fixture
async def bus(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Bus]:
    home = tmp_path / "home"
    setup.init(home)
    nc = await connect(nats_server.url, "test")
    await ensure_streams(nc.jetstream())
    b = Bus(nc, home, nats_server.url)
    await nc.subscribe(subjects.TASK_DUE, cb=b.on_due)  # core: sees every publish, even a deduplicated one
    await nc.subscribe(subjects.outbound_all("local"), cb=b.on_outbound)
    yield b
    await nc.close()


@pytest.fixture
async def scheduler(bus: Bus, nats_server: NatsServer) -> AsyncIterator[Scheduler]:
    s = Scheduler(bus.home, nats_server.url)
    await s.start(bus.nc)
    yield s
    s.stop()


def instants(fired: list[Fired]) -> list[int]:
    return [int(time.mktime(time.strptime(f.scheduled, "%Y-%m-%dT%H:%M:%SZ"))) - time.timezone for f in fired]


async def test_a_task_every_second_fires_on_time_for_a_minute_with_no_duplicate(bus: Bus, scheduler: Scheduler) -> None:
    await bus.op("create", "t-0000000000a1", prompt="tick", schedule="every 1s")
    await eventually(lambda: len(bus.fired("t-0000000000a1")) >= SOAK, timeout=SOAK + 30)
    fired = bus.fired("t-0000000000a1")
    at = instants(fired)
    assert len(at) >= SOAK - 1
    assert at == list(range(at[0], at[0] + len(at)))  # every second, none twice, none left out
    # Late by the server's clock of arrival, so a loaded test process does not count against the scheduler.
    stored = await bus.stored_at()
    lateness = [stored[f"task:t-0000000000a1:{f.scheduled}"] - s for f, s in zip(fired, at, strict=True)]
    assert all(0 <= late < 1.0 for late in lateness), max(lateness)
    first = fired[0].run
    assert (first.session_id, first.agent_group, first.route) == ("s-kitchen", "main", ROUTE)
    assert (first.task_id, first.text, first.at) == ("t-0000000000a1", "tick", float(at[0]))


async def test_a_paused_task_never_fires_until_resumed(bus: Bus, scheduler: Scheduler) -> None:
    await bus.op("create", "t-0000000000b1", prompt="quiet", schedule="every 1s")
    await bus.op("pause", "t-0000000000b1")

    async def paused() -> bool:
        return "t-0000000000b1 [paused]" in await agent_list(bus, "paused")

    await eventually(paused)
    # Not firing proves something only while the clock runs: another group's task fires three times first.
    ticking = await bus.ctl(
        sched.ADD,
        sched.AddRequest(
            agent_group="work",
            session_id="s-work",
            route=ev.Route(channel="local", chat_id="office"),
            prompt="tick",
            schedule="every 1s",
        ),
    )
    await eventually(lambda: len(bus.fired(ticking.id)) >= 3)
    assert bus.fired("t-0000000000b1") == []
    assert "t-0000000000b1 [paused]: 'every 1s'" in await agent_list(bus)
    assert "t-0000000000b1 [paused]" in await agent_list(bus, "paused")
    assert await agent_list(bus, "active") == "No active tasks."
    assert "there is no task status 'sleeping'" in await agent_list(bus, "sleeping", key="error")
    await bus.op("resume", "t-0000000000b1")
    await eventually(lambda: bus.fired("t-0000000000b1"), timeout=5)


async def test_a_pre_check_script_travels_with_each_run_until_removed(bus: Bus, scheduler: Scheduler) -> None:
    script = "echo '{\"wakeAgent\": false}'"
    await bus.op("create", "t-0000000000f1", prompt="news, if any", schedule="every 1s", script=script)
    await eventually(lambda: bus.fired("t-0000000000f1"))
    assert bus.fired("t-0000000000f1")[0].run.script == script
    assert "with a pre-check script" in await agent_list(bus)
    await bus.op("update", "t-0000000000f1", script="")
    await eventually(lambda: not bus.fired("t-0000000000f1")[-1].run.script)


async def agent_list(bus: Bus, status: str = "", key: str = "result") -> str:
    """What an agent's list_tasks reads (the runner asks on its behalf)."""
    answer = await bus.nc.request(
        subjects.ctl("scheduler", "list"),
        ev.encode(ev.TaskOp(op="list", request_id="r", agent_group="main", status=status)),
        timeout=5,
    )
    return str(json.loads(answer.data)[key])


async def test_a_bad_operation_is_refused_to_the_chat_that_asked(bus: Bus, scheduler: Scheduler) -> None:
    await bus.op("create", "t-0000000000d1", prompt="x", schedule="every tuesday-ish")
    await bus.op("create", "t-0000000000d2", prompt="x", schedule="0 8 * * *", timezone="Mars/Olympus")
    await bus.op("pause", "t-0000000000d3")
    await eventually(lambda: len(bus.notices) >= 3)
    texts = [n.text for n in bus.notices]
    assert "could not schedule the task: cannot read 'tuesday-ish' as a duration" in texts[0]
    assert "unknown time zone 'Mars/Olympus'" in texts[1]
    assert "could not pause task t-0000000000d3: there is no task t-0000000000d3" in texts[2]
    assert all(n.route == ROUTE and n.session_id == "s-kitchen" for n in bus.notices)
    assert await bus.ctl(sched.TASKS, sched.ListRequest()) == []


async def test_another_groups_task_is_out_of_an_agents_reach(bus: Bus, scheduler: Scheduler) -> None:
    other = await bus.ctl(
        sched.ADD,
        sched.AddRequest(
            agent_group="work",
            session_id="s-work",
            route=ev.Route(channel="local", chat_id="office"),
            prompt="standup",
            schedule="0 9 * * 1-5",
        ),
    )
    await bus.op("cancel", other.id)
    await eventually(lambda: bus.notices)
    assert f"there is no task {other.id}" in bus.notices[0].text
    assert (await bus.ctl(sched.GET, sched.TaskRef(task_id=other.id))).status == "active"


async def test_cli_lists_pauses_and_shows_runs(bus: Bus, scheduler: Scheduler) -> None:
    await bus.op("create", "t-0000000000e1", prompt="water the plants", schedule="0 8 * * *", timezone="Europe/Berlin")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clawden", *argv], env=scheduler.env, capture_output=True, text=True, timeout=30
        )

    def cli(*argv: str) -> str:
        done = run(*argv)
        assert done.returncode == 0, done.stderr
        return done.stdout

    async def listed() -> str | None:  # the create travels on the bus: ask until the CLI lists it
        listing = await asyncio.to_thread(cli, "tasks", "list")
        return listing if "t-0000000000e1" in listing else None

    listing = await eventually(listed, timeout=60)
    assert "Europe/Berlin" in listing and "08:00:00 CE" in listing and "water the plants" in listing
    assert "t-0000000000e1 is paused" in await asyncio.to_thread(cli, "tasks", "pause", "t-0000000000e1")
    updated = await asyncio.to_thread(cli, "tasks", "update", "t-0000000000e1", "--schedule", "30 7 * * *")
    assert "30 7 * * *" in updated
    assert await asyncio.to_thread(cli, "tasks", "runs", "t-0000000000e1") == "(none)\n"
    bad = await asyncio.to_thread(run, "tasks", "update", "t-0000000000e1", "--schedule", "soon")
    assert bad.returncode == 1 and "cannot read 'soon'" in bad.stderr
    script = scheduler.home / "news.sh"
    script.write_text("echo '{\"wakeAgent\": false}'\n")
    await asyncio.to_thread(cli, "tasks", "update", "t-0000000000e1", "--script", str(script))
    assert (
        json.loads(await asyncio.to_thread(cli, "tasks", "show", "t-0000000000e1", "--json"))["script"]
        == script.read_text()
    )
    await asyncio.to_thread(cli, "tasks", "update", "t-0000000000e1", "--no-script")
    assert json.loads(await asyncio.to_thread(cli, "tasks", "show", "t-0000000000e1", "--json"))["script"] == ""


async def test_a_task_whose_session_is_no_more_is_paused_when_the_router_says_so(
    bus: Bus, scheduler: Scheduler
) -> None:
    orphaned = await bus.ctl(
        sched.ADD,
        sched.AddRequest(
            agent_group="main", session_id="s-deleted", route=ROUTE, prompt="water the plants", schedule="every 1h"
        ),
    )
    cancelled = await bus.ctl(
        sched.ADD,
        sched.AddRequest(agent_group="main", session_id="s-deleted", route=ROUTE, prompt="feed", schedule="every 1h"),
    )
    await bus.ctl(sched.CANCEL, sched.TaskRef(task_id=cancelled.id))
    js = bus.nc.jetstream()
    for task in (orphaned, cancelled, orphaned):  # the router's word, for each run it dropped (twice: once more)
        told = ev.TaskOrphaned(
            task_id=task.id, run_id=f"task:{task.id}:x", session_id="s-deleted", reason="session s-deleted is gone"
        )
        await publish(js, subjects.event("router", "task_orphaned"), told, msg_id=f"router:{told.key}:{task.id}")

    async def paused() -> bool:
        return (await bus.ctl(sched.GET, sched.TaskRef(task_id=orphaned.id))).status == "paused"

    await eventually(paused)

    async def all_taken() -> bool:  # the third word too
        info = await js.consumer_info("CLAWDEN_EVENTS", "scheduler-orphans")
        return (info.num_pending, info.num_ack_pending) == (0, 0) and info.delivered.stream_seq > 0

    await eventually(all_taken)
    assert scheduler.log.read_text().count(f"task {orphaned.id} paused") == 1  # once, not at each word
    assert (await bus.ctl(sched.GET, sched.TaskRef(task_id=cancelled.id))).status == "cancelled"


async def test_tasks_follow_a_chat_the_router_moved_to_a_new_id(bus: Bus, scheduler: Scheduler) -> None:
    group = ev.Route(channel="telegram", chat_id="-41")
    moved = await bus.ctl(
        sched.ADD,
        sched.AddRequest(
            agent_group="main", session_id="s-family", route=group, prompt="water the plants", schedule="every 1s"
        ),
    )
    other = await bus.ctl(
        sched.ADD,
        sched.AddRequest(
            agent_group="main",
            session_id="s-other",
            route=ev.Route(channel="telegram", chat_id="-42"),
            prompt="feed the cat",
            schedule="every 1h",
        ),
    )
    await eventually(lambda: bus.fired(moved.id))
    assert bus.fired(moved.id)[0].run.route.chat_id == "-41"
    # What the router announces once it has moved the chat's wirings and sessions (a Telegram group
    # upgraded to a supergroup), under the key it uses.
    announced = ev.ChatMoved(channel="telegram", old_chat_id="-41", new_chat_id="-1001", sent_at=time.time())
    await publish(
        bus.nc.jetstream(), subjects.event("router", "chat_moved"), announced, msg_id=f"router:{announced.key}"
    )

    async def moved_over() -> bool:
        return str((await bus.ctl(sched.GET, sched.TaskRef(task_id=moved.id))).chat_id) == "-1001"

    await eventually(moved_over)
    since = len(bus.fired(moved.id))
    await eventually(lambda: len(bus.fired(moved.id)) > since)
    assert {f.run.route.chat_id for f in bus.fired(moved.id)[since:]} == {"-1001"}
    assert (await bus.ctl(sched.GET, sched.TaskRef(task_id=moved.id))).session_id == "s-family"
    assert (await bus.ctl(sched.GET, sched.TaskRef(task_id=other.id))).chat_id == "-42"


async def test_a_task_whose_runs_the_router_would_refuse_is_refused_when_it_is_added(
    bus: Bus, scheduler: Scheduler
) -> None:
    """A session id or group a due run may not carry (`TaskDue`) would make every run dropped as malformed, the
    task never fired nor paused: it is the caller's mistake, said at once."""
    for wrong, group, session in (("session_id", "work", "s work"), ("agent_group", "Work Group!", "s-work")):
        request = sched.AddRequest(
            agent_group=group,
            session_id=session,
            route=ev.Route(channel="local", chat_id="office"),
            prompt="p",
            schedule="every 1h",
        )
        with pytest.raises(ControlError, match=rf"bad request: .* at `\$\.{wrong}`"):
            await bus.ctl(sched.ADD, request)
