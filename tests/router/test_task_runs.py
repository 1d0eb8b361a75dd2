"""A scheduled task's due run goes through the router (`TaskDue` on `clawden.due`), which wakes the task's session
where it is now, at its epoch, through its outbox: so a session moved after the scheduler decided to fire still
gets the run, on its new runner, and the runner it left gets nothing. Real NATS and router.db; the router's own
handler (`Router.on_due`) and moves (`Router.fail_over`), in process, so a test sets their order."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from clawden import control, setup
from clawden.bus import bind, ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import scheduler as sched
from clawden.bus.pull import Puller
from clawden.bus.streams import STREAMS, router_due
from clawden.config import load
from clawden.runtime import ServiceContext
from services.router.service import Router
from services.router.store import RouterStore
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.router.conftest import running_router
from tests.router.test_heartbeats import beat
from tests.router.test_service import chat_message, send
from tests.scheduler.test_service import Scheduler

pytestmark = [pytest.mark.nats]

DEAD_AFTER = 2.0


class Moving:
    """The router's handler and store, with runners a test makes live or gone, and its due runs pulled by hand."""

    def __init__(self, router: Router, store: RouterStore, js: JetStreamContext, due: Puller) -> None:
        self.router, self.store, self.js, self.due = router, store, js, due

    async def chat(self, n: int = 1) -> ev.Wake:
        """A message in the local chat `kitchen`, which makes (or wakes) its session; the wake it caused."""
        outcome = await self.router.settle(
            self.store.route_batch, [chat_message(n, chat="kitchen", channel="local", sender="local:alice")], 1.0
        )
        assert outcome is not None and not outcome.unpublished
        [wake] = [e for o in outcome.outgoing if isinstance(e := ev.decode(o.payload), ev.Wake)]
        return wake

    def live(self, *runners: str) -> None:
        """These runners beat now; every other one the router heard last beat long ago (declared gone)."""
        now = time.time()
        for rid, seen in self.store.runners.snapshot().items():
            if rid not in runners:
                self.store.runners.heard(seen.beat, now - 10 * DEAD_AFTER)
        for rid in runners:
            self.store.runners.heard(beat(rid), now)

    async def move_to(self, runner: str) -> None:
        """The session's runner is declared gone, and the router moves it to `runner`, the only live one."""
        self.live(runner)
        await self.router.fail_over()

    async def handle(self, want: int = 1) -> None:
        """The router takes what the scheduler handed it (`want` messages), as its consume loop would."""
        got: list[object] = []
        while len(got) < want:
            msgs = await self.due.next(timeout=5)
            assert msgs, "the router's durable holds no due run"
            got += msgs
            await self.router.on_due(msgs)

    async def wakes(self, runner: str) -> list[ev.Wake | ev.Adopt]:
        return await wakes_on(self.js, runner)


async def wakes_on(js: JetStreamContext, runner: str) -> list[ev.Wake | ev.Adopt]:
    """Everything on `clawden.wake.<runner>`, in stream order."""
    found: list[ev.Wake | ev.Adopt] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg("CLAWDEN_WAKE", seq=seq, subject=subjects.wake(runner), next=True)
        except NotFoundError:
            return found
        assert msg.seq is not None
        seq = msg.seq + 1
        found.append(ev.WAKE_DECODER.decode(msg.data or b""))


@pytest.fixture
async def moving(tmp_path: Path, nc: Client) -> AsyncIterator[Moving]:
    js = nc.jetstream()
    await ensure_streams(js)
    store = await RouterStore.start(tmp_path / "router.db", "r1")  # before any heartbeat, sessions go to r1
    await store.run(store.seed, "main", "local", "alice", 0.0)
    store.shared_storage, store.dead_after = True, DEAD_AFTER
    # listening long since, on this link: a runner never heard (r1) is gone
    store.runners.looked(time.time() - 10 * DEAD_AFTER, nc.stats["reconnects"])
    ctx = types.SimpleNamespace(js=js, nc=nc, stopping=asyncio.Event())
    due = await bind(js, router_due(), batch=64)
    try:
        yield Moving(Router(cast(ServiceContext, ctx), store), store, js, due)
    finally:
        await due.stop()
        await store.stop()


def due_run(session_id: str, n: int = 1, *, group: str = "main", script: str = "") -> ev.TaskDue:
    """A run as the scheduler hands it over (services/scheduler/service.py `_hand_over`)."""
    return ev.TaskDue(
        id=f"task:t-0000000000a1:2026-01-05T07:0{n}:00Z",
        task_id="t-0000000000a1",
        session_id=session_id,
        agent_group=group,
        route=ev.Route(channel="local", chat_id="kitchen"),
        text="stretch",
        at=1767596400.0 + 60 * n,
        script=script,
    )


async def hand_over(js: JetStreamContext, run: ev.TaskDue, msg_id: str = "") -> None:
    await publish(js, subjects.TASK_DUE, run, msg_id=msg_id or run.id)


def task_wakes(wakes: list[ev.Wake | ev.Adopt], run: ev.TaskDue) -> list[ev.Wake]:
    return [w for w in wakes if isinstance(w, ev.Wake) and w.message.id == run.id]


async def test_a_due_run_wakes_the_session_on_the_runner_it_is_on_now_at_its_epoch(moving: Moving) -> None:
    chat = await moving.chat()
    await moving.move_to("r3")  # epoch 2
    await moving.move_to("r2")  # epoch 3
    run = due_run(chat.session_id, script="echo '{\"wakeAgent\": true}'")
    await hand_over(moving.js, run)
    await moving.handle()

    [wake] = task_wakes(await moving.wakes("r2"), run)
    assert (wake.session_id, wake.agent_group, wake.route, wake.epoch) == (chat.session_id, "main", run.route, 3)
    assert wake.message == ev.WakeMessage(
        id=run.id, kind="task", text="stretch", sent_at=run.at, trigger=True, script=run.script
    )
    # What the router knows of the group, as on a chat message's wake: the runner keeps both up to date.
    assert (wake.destinations, wake.group) == (chat.destinations, chat.group) and wake.group is not None
    assert wake.key == f"{chat.session_id}:{run.id}"  # the runner's insert is keyed by the message
    assert [task_wakes(await moving.wakes(r), run) for r in ("r1", "r3")] == [[], []]
    assert moving.router.counts["task_runs"] == 1


async def test_a_run_aimed_at_a_chat_that_moved_wakes_the_session_in_its_new_chat(moving: Moving) -> None:
    chat = await moving.chat()
    # The scheduler decided the run before it heard of the move (or the task was made from the runner's record
    # of the chat, not yet told): its route names the old id, where nobody reads any more.
    run = due_run(chat.session_id)
    moved = ev.ChatMoved(channel="local", old_chat_id="kitchen", new_chat_id="kitchen2", sent_at=time.time())
    outcome = await moving.router.settle(moving.store.move_chat, moved)
    assert outcome is not None and outcome.counts["chats_moved"] == 1
    await hand_over(moving.js, run)
    await moving.handle()
    [wake] = task_wakes(await moving.wakes("r1"), run)
    assert wake.session_id == chat.session_id
    assert wake.route == ev.Route(channel="local", chat_id="kitchen2")  # where the answer goes, and the runner keeps


async def test_a_run_handed_over_again_wakes_once(moving: Moving) -> None:
    chat = await moving.chat()
    run = due_run(chat.session_id)
    await hand_over(moving.js, run)
    # Past the stream's dedupe (a scheduler that crashed a day before it committed, or a redelivery to the
    # router): the router's own record of what it handled keeps it to one wake.
    await hand_over(moving.js, run, msg_id=f"{run.id}:again")
    await moving.handle(want=2)
    assert len(task_wakes(await moving.wakes("r1"), run)) == 1
    assert (moving.router.counts["task_runs"], moving.router.counts["duplicates"]) == (1, 1)


async def test_a_run_for_a_session_that_is_no_more_wakes_nothing_and_says_why(
    moving: Moving, caplog: pytest.LogCaptureFixture
) -> None:
    """... in the log, and to the scheduler (`TaskOrphaned` on `event.router.task_orphaned`), which pauses the task."""
    chat = await moving.chat()
    before = (await moving.js.stream_info("CLAWDEN_WAKE")).state.messages
    gone, other = due_run("s-deleted", 1), due_run(chat.session_id, 2, group="work")
    with caplog.at_level(logging.WARNING, logger="clawden.router"):
        await hand_over(moving.js, gone)
        await hand_over(moving.js, other)
        await moving.handle(want=2)
    assert (await moving.js.stream_info("CLAWDEN_WAKE")).state.messages == before
    assert moving.router.counts["task_runs_dropped"] == 2
    said = [r.getMessage() for r in caplog.records]
    told = "; the scheduler pauses the task"
    assert f"task t-0000000000a1: run {gone.id} dropped: session s-deleted no longer exists{told}" in said
    assert f"task t-0000000000a1: run {other.id} dropped: session {chat.session_id} belongs to main{told}" in said
    orphans = []
    for seq in range(1, (await moving.js.stream_info("CLAWDEN_EVENTS")).state.last_seq + 1):
        msg = await moving.js.get_msg("CLAWDEN_EVENTS", seq)
        if msg.subject == subjects.event("router", "task_orphaned"):
            orphans.append(ev.decoder_for(ev.TaskOrphaned).decode(msg.data or b""))
    assert [(o.task_id, o.run_id, o.session_id, o.reason) for o in orphans] == [
        ("t-0000000000a1", gone.id, "s-deleted", "session s-deleted no longer exists"),
        ("t-0000000000a1", other.id, chat.session_id, f"session {chat.session_id} belongs to main"),
    ]
    info = await moving.js.consumer_info("CLAWDEN_TASKS", "router-due")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)  # acked: never handed over again


async def test_a_malformed_run_is_logged_and_dropped_and_the_next_one_still_wakes(
    moving: Moving, caplog: pytest.LogCaptureFixture
) -> None:
    chat = await moving.chat()
    run = due_run(chat.session_id)
    with caplog.at_level(logging.ERROR, logger="clawden.router"):
        await moving.js.publish(subjects.TASK_DUE, b'{"type": "task.due", "id": 7}')
        await moving.js.publish(subjects.TASK_DUE, b"not json")
        await hand_over(moving.js, run)
        await moving.handle(want=3)
    assert moving.router.counts["poisoned"] == 2
    assert sum("dropping malformed task run on clawden.due" in r.getMessage() for r in caplog.records) == 2
    assert len(task_wakes(await moving.wakes("r1"), run)) == 1
    info = await moving.js.consumer_info("CLAWDEN_TASKS", "router-due")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_a_run_decided_before_a_move_and_handled_after_it_goes_to_the_new_runner_only(moving: Moving) -> None:
    chat = await moving.chat()
    assert chat.epoch == 1
    # The scheduler decides to fire while the session is on r1 (what it used to read from the placement), and
    # hands the run over; before the router takes it, r1 is declared gone and the session moves to r2.
    run = due_run(chat.session_id)
    await hand_over(moving.js, run)
    await moving.move_to("r2")
    await moving.handle()
    [wake] = task_wakes(await moving.wakes("r2"), run)
    assert wake.epoch == 2
    assert task_wakes(await moving.wakes("r1"), run) == []  # the runner it left: nothing to lose it in


async def test_a_run_handled_before_a_move_is_re_sent_by_it_to_the_new_runner(moving: Moving) -> None:
    chat = await moving.chat()
    run = due_run(chat.session_id)
    await hand_over(moving.js, run)
    await moving.handle()  # woken on r1, which never takes it
    await moving.move_to("r2")
    [on_r1] = task_wakes(await moving.wakes("r1"), run)
    [on_r2] = task_wakes(await moving.wakes("r2"), run)
    assert (on_r1.epoch, on_r2.epoch) == (1, 2) and on_r2.message == on_r1.message


async def test_an_install_with_the_older_tasks_stream_takes_due_runs_after_the_upgrade(nc: Client) -> None:
    js = nc.jetstream()
    [tasks] = [s for s in STREAMS if s.name == "CLAWDEN_TASKS"]
    await js.add_stream(dataclasses.replace(tasks.config(), subjects=[subjects.ALL_TASKS]))  # as it was made
    await js.publish(subjects.task("create"), b"{}")
    await ensure_streams(js)  # what every core service runs as it starts
    info = await js.stream_info("CLAWDEN_TASKS")
    assert info.config.subjects == [subjects.ALL_TASKS, subjects.TASK_DUE]
    assert info.state.messages == 1  # what it held stays
    assert (await js.publish(subjects.TASK_DUE, b"{}")).stream == "CLAWDEN_TASKS"


async def test_a_task_of_a_chats_session_reaches_its_runner_through_scheduler_and_router_processes(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    js = nc.jetstream()
    async with running_router(tmp_path / "router", nats_server.url, 'id = "r1"') as router:
        await send(js, chat_message(1, chat="kitchen", channel="local", sender="local:someone"))

        async def session() -> str | None:
            wakes = await wakes_on(js, "r1")
            return wakes[0].session_id if wakes else None

        session_id = await eventually(session, 30, router.output)
        assert isinstance(session_id, str)
        setup.init(tmp_path / "scheduler")
        scheduler = Scheduler(tmp_path / "scheduler", nats_server.url)
        await scheduler.start(nc)
        try:
            task = await scheduler_add(tmp_path / "scheduler", nats_server.url, session_id)

            async def woken() -> ev.Wake | None:
                found = [w for w in await wakes_on(js, "r1") if isinstance(w, ev.Wake) and w.message.kind == "task"]
                return found[0] if found else None

            wake = await eventually(woken, 30, lambda: router.output() + scheduler.log.read_text())
            assert isinstance(wake, ev.Wake)
            assert (wake.session_id, wake.epoch, wake.message.text) == (session_id, 1, "stretch")
            assert wake.message.id.startswith(f"task:{task}:") and wake.group is not None
            assert (await router.stats())["task_runs"] >= 1
        finally:
            scheduler.stop()


async def scheduler_add(home: Path, url: str, session_id: str) -> str:
    """`clawden tasks add`: a task every second for the session, in its chat."""
    info = await control.ask(
        load(home, {"CLAWDEN_NATS_URL": url}),
        sched.ADD,
        sched.AddRequest(
            agent_group="main",
            session_id=session_id,
            route=ev.Route(channel="local", chat_id="kitchen"),
            prompt="stretch",
            schedule="every 1s",
        ),
    )
    return info.id


async def test_a_move_publishes_the_whole_outbox_first_so_no_wake_reaches_the_runner_left_after_it(
    moving: Moving, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = await moving.chat()
    runs = [due_run(chat.session_id, n) for n in (1, 2, 3)]
    publish_for_real = moving.router.flush

    async def not_taken(outgoing: object) -> bool:  # NATS away: the wakes wait in the outbox, for r1
        return False

    monkeypatch.setattr(moving.router, "flush", not_taken)
    for run in runs:
        await hand_over(moving.js, run)
    await moving.handle(3)
    monkeypatch.setattr(moving.router, "flush", publish_for_real)
    # An outbox longer than one read of it (2,000 rows in the service; one here).
    monkeypatch.setattr(moving.store, "outgoing", functools.partial(RouterStore.outgoing, moving.store, 1))
    await moving.move_to("r2")
    while rows := await moving.store.run(moving.store.outgoing):  # the publishing rounds after the move
        assert await moving.router.flush(rows)
    on_r2 = await moving.wakes("r2")
    assert [[w.epoch for w in task_wakes(on_r2, run)] for run in runs] == [[2], [2], [2]]
