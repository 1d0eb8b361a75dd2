"""The scheduler service: applies task operations from agents and the CLI, and hands each due run to the router
(which wakes the session where it is), exactly once, sleeping until the next one is due."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from nats.aio.msg import Msg

from clawden.bus import bind, consume, publish, stored_at, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import scheduler as api
from clawden.bus.streams import scheduler_chat_moves, scheduler_orphans, scheduler_tasks
from clawden.clock import Clock
from clawden.runtime import ControlError, ServiceContext
from services.scheduler import schedule as sched
from services.scheduler.catchup import Watch, plan
from services.scheduler.store import STATUSES, Change, NewTask, PastTime, Store, Task, TaskError

log = logging.getLogger("clawden.scheduler")

# Longest sleep without looking at the clock again: monotonic timers do not count a suspended
# host's sleep, so a wall-clock jump is noticed within this (a safety net, not the trigger). It also
# bounds how near a suspend's start or end a run may come due and still fire (catchup.away).
MAX_SLEEP = 300.0
RETRY_AFTER = 1.0  # a publish that failed (NATS away) is retried this soon


def machine_slept() -> float | None:
    """Seconds this machine has been suspended since it booted; None where no pair of clocks tells.

    The difference of a clock that counts a suspend and one that does not, both read from the same counter, so it
    grows by the time asleep and by nothing else (no NTP slew, no wall-clock step). Linux: CLOCK_BOOTTIME counts a
    suspend, CLOCK_MONOTONIC (the event loop's timers) does not, and both are slewed alike. macOS: time.monotonic()
    and CLOCK_UPTIME_RAW are mach_absolute_time, which stops in sleep, while CLOCK_MONOTONIC_RAW
    (mach_continuous_time) goes on; both are raw (CLOCK_MONOTONIC there also counts sleep, but is slewed)."""
    if sys.platform == "linux":
        return time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
    if sys.platform == "darwin":
        return time.clock_gettime(time.CLOCK_MONOTONIC_RAW) - time.clock_gettime(time.CLOCK_UPTIME_RAW)
    return None  # elsewhere a run is judged by how late it is (catchup.GRACE)


class Scheduler:
    def __init__(
        self,
        ctx: ServiceContext,
        store: Store,
        clock: Clock | None = None,
        slept: Callable[[], float | None] = machine_slept,
    ) -> None:
        self.ctx = ctx
        self.store = store  # started: one thread owns the connection, every step runs there in order
        self.clock = clock or Clock()  # what time it is and how it passes: a test moves a fake one
        self.slept = slept  # how long the machine has been suspended: a test suspends a fake one
        self.zone = sched.host_zone()
        self.changed = asyncio.Event()  # re-arms the clock: a task was added or changed
        # A run that came due before the start was missed while the scheduler was down; one that came due since,
        # while the machine slept (its suspended time grew between two looks at the clock around it), was missed
        # too; any other run fires, however late.
        self.started = self.clock.now()
        self.looked = (self.started, self.slept())  # the last look at the clock: wall time, suspended time
        # What the scheduler saw when each due task's runs were decided, by (task id, next run): kept until they
        # are handed over, so a run is judged as it was first seen due, however long NATS is away after it.
        self.decided: dict[tuple[str, int | None], Watch] = {}
        self.counters: Counter[str] = Counter()

    # --- firing --------------------------------------------------------------------------------

    async def firing(self) -> None:
        """Sleep until the earliest due run (or a change), fire what is due, repeat until stopping."""
        while not self.ctx.stopping.is_set():
            self.changed.clear()
            next_at = await self.store.run(self.store.next_due)
            watch = self.look()
            now = watch.now
            if next_at is not None and next_at <= now:
                try:
                    await self.fire_due(watch)
                except Exception:
                    log.exception("firing due tasks failed; retrying in %.0fs", RETRY_AFTER)
                    await self.clock.sleep(RETRY_AFTER, self.ctx.stopping, self.changed)
                continue
            sleep = MAX_SLEEP if next_at is None else min(MAX_SLEEP, next_at - now)
            await self.clock.sleep(sleep, self.ctx.stopping, self.changed)

    def look(self) -> Watch:
        """Look at the clock: the time now, and how long the machine slept since the last look."""
        now, slept = self.clock.now(), self.slept()
        since, slept_before = self.looked
        self.looked = (now, slept)
        grown = None if slept is None or slept_before is None else slept - slept_before
        return Watch(started=self.started, since=since, now=now, slept=grown)

    async def fire_due(self, watch: Watch) -> None:
        """Hand every due task's runs to the router; a publish that fails raises, and the loop tries again.

        Each task's runs are planned on what the scheduler saw when they were first seen due, not at this try: a
        run it decided to fire is fired once NATS takes it, as late as that may be, and only runs it was not there
        for (it was down, the machine asleep) are judged by the catch-up policy. A decision is forgotten once its
        task is no longer due from the same run (handed over and committed, paused, cancelled or rescheduled)."""
        tasks = await self.store.run(self.store.due, watch.now)
        self.decided = {(t.id, t.next_run): self.decided.get((t.id, t.next_run), watch) for t in tasks}
        for task in tasks:
            await self._fire(task, self.decided[(task.id, task.next_run)])

    async def _fire(self, task: Task, decided: Watch) -> None:
        now = self.clock.now()
        try:
            schedule = task.parsed()
        except sched.ScheduleError as exc:  # e.g. the zone left the tz database: stop, loudly
            log.error("task %s has an unusable schedule (%s); pausing it", task.id, exc)
            await self.store.run(self.store.set_status, task, "pause", now)
            return
        assert task.next_run is not None
        p = plan(schedule, task.next_run, decided, task.catch_up, task.anchor)
        # Publish first, then commit: a crash in between re-publishes the same msg id, which
        # JetStream drops as a duplicate, so each run is fired once whatever happens.
        for at, outcome in p.fire:
            current = await self._still_due(task)
            if current is None:
                return
            await self._hand_over(current, at)
            self.counters[outcome] += 1
        for _at, outcome in p.not_fired:
            self.counters[outcome] += 1
        await self.store.run(self.store.record_plan, task, p, now)
        if p.not_fired:
            log.warning(
                "task %s: %d run(s) %s: due while the scheduler was down or the machine asleep, or behind a later run"
                " that fired in their place (catch-up policy %s)%s",
                task.id,
                len(p.not_fired) + p.unlisted,
                p.not_fired[0][1],
                task.catch_up,
                ", one caught up" if any(o == "caught_up" for _, o in p.fire) else "",
                extra={"task_id": task.id},
            )

    async def _still_due(self, task: Task) -> Task | None:
        """The task as it is now, if it is still due from the run it was planned from. The due list was read before
        the publishes ahead of this one, which may have waited on NATS: a pause or cancel answered meanwhile holds,
        and a rescheduled task is planned again on the next turn."""
        current = await self.store.run(self.store.get, task.id)
        if current is not None and current.status == "active" and current.next_run == task.next_run:
            return current
        what = "deleted" if current is None else "rescheduled" if current.status == "active" else current.status
        log.info(
            "task %s: its due run is not fired: the task was %s meanwhile", task.id, what, extra={"task_id": task.id}
        )
        return None

    async def _hand_over(self, task: Task, at: int) -> None:
        """The run, to the router (`TaskDue`): it alone knows where the session is now, and wakes it there at its
        epoch through its outbox, in turn with its moves, so a run decided while the session moves still reaches
        it. Keyed `task:<task id>:<instant>`, so a second publish of it (a crash before the commit) is dropped."""
        key = f"task:{task.id}:{sched.iso(at)}"
        due = ev.TaskDue(
            id=key,
            task_id=task.id,
            session_id=task.session_id,
            agent_group=task.agent_group,
            route=ev.Route(channel=task.channel, chat_id=task.chat_id, thread_id=task.thread_id),
            text=task.prompt,
            at=float(at),
            script=task.script,
        )
        await publish(self.ctx.js, subjects.TASK_DUE, due, msg_id=key)
        log.info(
            "fired task %s for %s: handed to the router for session %s",
            task.id,
            sched.iso(at),
            task.session_id,
            extra={"task_id": task.id, "session_id": task.session_id},
        )

    # --- operations from agents (durable, via the runner) -------------------------------------

    async def on_op(self, op: ev.TaskOp, msg: Msg) -> None:
        """Apply one agent's task operation; acked (by consume) only once the store committed it."""
        if op.op == "list":
            return  # lists are requests (ctl.scheduler.list); one on the stream has nothing to change
        seen = await self.store.run(self.store.op_seen, op.request_id)
        if seen is not None:
            outcome, error = seen
            if outcome == "rejected":
                await self._tell_rejected(op, error)  # the notice may not have left last time
            return
        when = stored_at(msg, self.clock.now())
        try:
            task = await self.store.run(self._apply, op, when)
        except TaskError as exc:
            self.counters["ops_rejected"] += 1
            log.warning(
                "rejected task %s %s from %s: %s",
                op.op,
                op.task_id,
                op.agent_group,
                exc,
                extra={"task_id": op.task_id or "", "session_id": op.session_id},
            )
            await self.store.run(
                self.store.record_op, op.request_id, op.op, op.task_id, op.agent_group, self.clock.now(), str(exc)
            )
            await self._tell_rejected(op, str(exc))
            return
        self.counters["ops_applied"] += 1
        log.info(
            "task %s: %s from %s, next run %s",
            task.id,
            op.op,
            op.created_by or op.agent_group,
            sched.iso(task.next_run) if task.next_run is not None else "-",
            extra={"task_id": task.id},
        )
        self.changed.set()

    async def on_orphaned(self, orphan: ev.TaskOrphaned, msg: Msg) -> None:
        """The router dropped a run of a task whose session is no more: the task is paused, not fired into
        nothing at every run. Applying it twice changes nothing."""
        task = await self.store.run(self.store.orphaned, orphan.task_id, self.clock.now())
        if task is None:
            return
        self.counters["tasks_orphaned"] += 1
        log.warning(
            "task %s paused: its run %s was dropped (%s)",
            task.id,
            orphan.run_id,
            orphan.reason,
            extra={"task_id": task.id, "session_id": orphan.session_id},
        )
        self.changed.set()

    async def on_chat_moved(self, moved: ev.ChatMoved, msg: Msg) -> None:
        """The router moved a chat to its new id (a Telegram group became a supergroup): tasks aimed at the
        old id would post where nobody reads any more. Applying it twice changes nothing."""
        count = await self.store.run(
            self.store.move_chat, moved.channel, moved.old_chat_id, moved.new_chat_id, self.clock.now()
        )
        if count:
            self.counters["tasks_moved"] += count
            log.warning(
                "%s chat %s is now %s: %d task(s) moved with it",
                moved.channel,
                moved.old_chat_id,
                moved.new_chat_id,
                count,
            )

    def _apply(self, op: ev.TaskOp, when: float) -> Task:
        """On the store thread: one agent operation, validated against what the agent may touch."""
        if not op.task_id:
            raise TaskError("the operation names no task")
        if op.op == "create":
            if op.route is None or not op.session_id:
                raise TaskError("a task needs the chat and session it belongs to")
            return self.store.create(
                NewTask(
                    id=op.task_id,
                    agent_group=op.agent_group,
                    session_id=op.session_id,
                    runner=_runner(op.runner or self.ctx.config.runner.id),
                    channel=op.route.channel,
                    chat_id=op.route.chat_id,
                    thread_id=op.route.thread_id,
                    prompt=op.prompt or "",
                    schedule=op.schedule or "",
                    timezone=op.timezone or self.zone,
                    catch_up="once",
                    created_by=op.created_by or f"agent:{op.agent_group}",
                    script=op.script or "",
                ),
                when,
                op.request_id,
                min_interval=self.ctx.config.scheduler.min_interval,
            )
        task = self.store.get(op.task_id)
        if task is None or task.agent_group != op.agent_group:  # another group's task does not exist for it
            raise TaskError(f"there is no task {op.task_id}")
        if op.op == "update":
            return self.store.update(
                task,
                Change(prompt=op.prompt, schedule=op.schedule, timezone=op.timezone, script=op.script),
                when,
                op.request_id,
                min_interval=self.ctx.config.scheduler.min_interval,
            )
        action: Literal["pause", "resume", "cancel"] = op.op  # type: ignore[assignment]  # create, update returned; on_op drops list
        return self.store.set_status(task, action, when, op.request_id)

    async def _tell_rejected(self, op: ev.TaskOp, error: str) -> None:
        """The agent was told "on its way" already: its chat hears what went wrong instead."""
        if op.route is None:
            return
        what = "schedule the task" if op.op == "create" else f"{op.op} task {op.task_id}"
        notice = ev.OutboundMessage(
            id=f"task-rejected:{op.request_id}",
            route=op.route,
            text=f"⚠️ The scheduler could not {what}: {error}",
            session_id=op.session_id,
            agent_group=op.agent_group,
            kind="error",
        )
        await publish(self.ctx.js, subjects.outbound(op.route.channel, op.route.chat_id), notice, msg_id=notice.id)

    # --- control (request/reply) ---------------------------------------------------------------

    async def agent_list(self, op: ev.TaskOp) -> api.AgentTasks:
        """`clawden.ctl.scheduler.list`: an agent's tasks as text for the agent, never an error reply."""
        if op.status and op.status not in STATUSES:
            return api.AgentTasks(error=f"there is no task status {op.status!r} (one of {', '.join(STATUSES)})")
        wanted = (op.status,) if op.status else ("active", "paused")
        tasks = [t for t in await self.store.run(self.store.tasks, op.agent_group) if t.status in wanted]
        if not tasks:
            return api.AgentTasks(result=f"No {op.status} tasks." if op.status else "No scheduled tasks.")
        return api.AgentTasks(result="\n".join(_describe(t) for t in tasks))

    async def ctl_tasks(self, req: api.ListRequest) -> list[api.TaskInfo]:
        return [_info(t) for t in await self.store.run(self.store.tasks, req.agent_group, req.status)]

    async def ctl_get(self, req: api.TaskRef) -> api.TaskInfo:
        return _info(await self._task(req.task_id))

    async def ctl_runs(self, req: api.RunsRequest) -> list[api.Run]:
        await self._task(req.task_id)
        return msgspec.convert(await self.store.run(self.store.runs, req.task_id, req.limit), list[api.Run])

    async def ctl_add(self, req: api.AddRequest) -> api.TaskInfo:
        new = NewTask(
            id=f"t-{secrets.token_hex(6)}",
            agent_group=req.agent_group,
            session_id=req.session_id,
            runner=_runner(req.runner or self.ctx.config.runner.id),
            channel=req.route.channel,
            chat_id=req.route.chat_id,
            thread_id=req.route.thread_id,
            prompt=req.prompt,
            schedule=req.schedule,
            timezone=req.timezone or self.zone,
            catch_up=req.catch_up,
            created_by="cli",
            script=req.script,
        )
        create = functools.partial(
            self.store.create, min_interval=self.ctx.config.scheduler.min_interval, allow_past=req.allow_past
        )
        try:
            task = await self.store.run(create, new, self.clock.now())
        except PastTime as exc:
            raise ControlError(f"{exc}: give a later time, or add --now to run it once right away") from None
        except TaskError as exc:
            raise ControlError(str(exc)) from None
        self.changed.set()
        return _info(task)

    async def ctl_update(self, req: api.UpdateRequest) -> api.TaskInfo:
        task = await self._task(req.task_id)
        change = Change(
            prompt=req.prompt, schedule=req.schedule, timezone=req.timezone, catch_up=req.catch_up, script=req.script
        )
        update = functools.partial(self.store.update, min_interval=self.ctx.config.scheduler.min_interval)
        return _info(await self._change(update, task, change, self.clock.now()))

    def ctl_status(self, op: Literal["pause", "resume", "cancel"]) -> Callable[[api.TaskRef], Awaitable[api.TaskInfo]]:
        async def handle(req: api.TaskRef) -> api.TaskInfo:
            task = await self._task(req.task_id)
            return _info(await self._change(self.store.set_status, task, op, self.clock.now()))

        return handle

    async def _task(self, task_id: str) -> Task:
        task = await self.store.run(self.store.get, task_id)
        if task is None:
            raise ControlError(f"there is no task {task_id}")
        return task

    async def _change(self, fn: Callable[..., Task], *args: Any) -> Task:
        try:
            task = await self.store.run(fn, *args)
        except TaskError as exc:
            raise ControlError(str(exc)) from None
        self.changed.set()
        return task


def _info(task: Task) -> api.TaskInfo:
    return msgspec.convert(task.json(), api.TaskInfo)


def _runner(name: str) -> str:
    try:
        return subjects.token(name)
    except ValueError:
        raise TaskError(f"not a runner name: {name!r}") from None


def _describe(task: Task) -> str:
    when = f"next {sched.local(task.next_run, task.timezone)}" if task.next_run is not None else "nothing left to run"
    state = "" if task.status == "active" else f" [{task.status}]"
    script = ", with a pre-check script" if task.script else ""
    return f"{task.id}{state}: '{task.schedule}' ({task.timezone}){script}, {when} — {task.prompt[:200]}"


async def main(ctx: ServiceContext) -> None:
    store = await Store.start(ctx.config.data_dir / "scheduler.db")
    scheduler = Scheduler(ctx, store)
    ctx.stats["scheduler"] = scheduler.counters
    try:
        await ctx.endpoint(api.AGENT_LIST, scheduler.agent_list)
        await ctx.endpoint(api.TASKS, scheduler.ctl_tasks)
        await ctx.endpoint(api.GET, scheduler.ctl_get)
        await ctx.endpoint(api.RUNS, scheduler.ctl_runs)
        await ctx.endpoint(api.ADD, scheduler.ctl_add)
        await ctx.endpoint(api.UPDATE, scheduler.ctl_update)
        await ctx.endpoint(api.PAUSE, scheduler.ctl_status("pause"))
        await ctx.endpoint(api.RESUME, scheduler.ctl_status("resume"))
        await ctx.endpoint(api.CANCEL, scheduler.ctl_status("cancel"))
        ops = await bind(ctx.js, scheduler_tasks())
        moves = await bind(ctx.js, scheduler_chat_moves())
        orphans = await bind(ctx.js, scheduler_orphans())
        await ctx.ready(f"scheduler ready, host zone {scheduler.zone}")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(scheduler.firing(), name="scheduler-clock")
            tg.create_task(consume(ops, ev.TaskOp, scheduler.on_op, stopping=ctx.stopping), name="scheduler-ops")
            tg.create_task(
                consume(moves, ev.ChatMoved, scheduler.on_chat_moved, stopping=ctx.stopping),
                name="scheduler-chat-moves",
            )
            tg.create_task(
                consume(orphans, ev.TaskOrphaned, scheduler.on_orphaned, stopping=ctx.stopping),
                name="scheduler-orphans",
            )
    finally:
        await store.stop()
