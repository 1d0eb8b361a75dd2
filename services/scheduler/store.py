"""`scheduler.db`: tasks, their run log and the task operations already applied. Owned by the scheduler
alone; synchronous, run on the service's one store thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from clawden import servicedb
from services.scheduler import schedule as sched
from services.scheduler.catchup import Outcome, Plan, Policy

Status = Literal["active", "paused", "done", "cancelled"]
STATUSES: tuple[Status, ...] = get_args(Status)
_STATUS_AFTER: dict[str, Status] = {"pause": "paused", "resume": "active", "cancel": "cancelled"}
RUNS_KEPT = 1000  # run log rows kept per task
MAX_SCRIPT = 16 * 1024  # characters of a pre-check script

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_tasks",
        """
        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            agent_group TEXT NOT NULL,
            session_id TEXT NOT NULL,
            runner TEXT NOT NULL,
            channel TEXT NOT NULL,
            chat_id TEXT NOT NULL,
            thread_id TEXT,
            prompt TEXT NOT NULL,
            schedule TEXT NOT NULL,
            timezone TEXT NOT NULL,
            catch_up TEXT NOT NULL CHECK (catch_up IN ('skip', 'once')),
            status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'done', 'cancelled')),
            anchor INTEGER NOT NULL,      -- when the schedule was set: intervals count from here
            next_run INTEGER,             -- UTC epoch seconds; NULL once nothing is left to run
            last_run INTEGER,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX tasks_due ON tasks (next_run) WHERE status = 'active';
        CREATE TABLE runs (
            task_id TEXT NOT NULL,
            scheduled_at INTEGER NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('fired', 'caught_up', 'missed', 'skipped')),
            at REAL NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (task_id, scheduled_at)
        );
        -- Every task operation seen, by request id: a redelivered one is answered from here.
        CREATE TABLE ops (
            request_id TEXT PRIMARY KEY,
            op TEXT NOT NULL,
            task_id TEXT,
            agent_group TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'rejected')),
            error TEXT NOT NULL DEFAULT '',
            at REAL NOT NULL
        );
    """,
    ),
    # A bash script the agent's container runs before each run; it decides whether the model is woken.
    ("0002_precheck_script", "ALTER TABLE tasks ADD COLUMN script TEXT NOT NULL DEFAULT ''"),
]


class TaskError(ValueError):
    """An operation the scheduler refuses (bad schedule, unknown task …); the message is for a person."""


class PastTime(TaskError):
    """A one-shot time already past, refused unless the caller allows it."""


@dataclass(frozen=True, kw_only=True)
class NewTask:
    """A task as asked for; the store adds its state (`Task`)."""

    id: str
    agent_group: str
    session_id: str
    runner: str
    channel: str
    chat_id: str
    thread_id: str | None
    prompt: str
    schedule: str
    timezone: str
    catch_up: Policy
    created_by: str
    script: str = ""  # the pre-check script ("": the model is woken every run)


@dataclass(frozen=True, kw_only=True)
class Task(NewTask):
    status: Status
    anchor: int
    next_run: int | None
    last_run: int | None
    created_at: float
    updated_at: float

    def parsed(self) -> sched.Schedule:
        return sched.parse(self.schedule, self.timezone, self.anchor)

    def json(self) -> dict[str, Any]:
        out = asdict(self)
        out["next_run_local"] = sched.local(self.next_run, self.timezone) if self.next_run is not None else None
        return out


@dataclass(frozen=True)
class Change:
    prompt: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    catch_up: Policy | None = None
    script: str | None = None  # "": remove the script


def migrate(conn: sqlite3.Connection) -> list[str]:
    return servicedb.apply_migrations(conn, MIGRATIONS)


class Store(servicedb.Store):
    migrations = MIGRATIONS
    synchronous = "FULL"  # a fired run is never forgotten by a power cut

    # --- reading -------------------------------------------------------------------------------

    def get(self, task_id: str) -> Task | None:
        row = self.conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _task(row)

    def tasks(self, agent_group: str = "", status: str = "") -> list[Task]:
        query, args = "SELECT * FROM tasks WHERE 1", []
        if agent_group:
            query += " AND agent_group = ?"
            args.append(agent_group)
        if status:
            query += " AND status = ?"
            args.append(status)
        return [_task(r) for r in self.conn.execute(query + " ORDER BY created_at", args)]

    def next_due(self) -> int | None:
        row = self.conn.execute("SELECT MIN(next_run) FROM tasks WHERE status = 'active'").fetchone()
        return None if row[0] is None else int(row[0])

    def due(self, now: float) -> list[Task]:
        rows = self.conn.execute(
            "SELECT * FROM tasks WHERE status = 'active' AND next_run <= ? ORDER BY next_run", (now,)
        )
        return [_task(r) for r in rows]

    def runs(self, task_id: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM runs WHERE task_id = ? ORDER BY scheduled_at DESC LIMIT ?", (task_id, limit)
        )
        return [dict(r) | {"scheduled": sched.iso(r["scheduled_at"])} for r in rows]

    def op_seen(self, request_id: str) -> tuple[str, str] | None:
        row = self.conn.execute("SELECT outcome, error FROM ops WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    # --- changing ------------------------------------------------------------------------------

    def record_op(
        self, request_id: str, op: str, task_id: str | None, agent_group: str, now: float, error: str = ""
    ) -> None:
        """Log an operation; a rejected one is kept too, so its redelivery is not judged twice."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO ops VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, op, task_id, agent_group, "rejected" if error else "applied", error, now),
            )

    def create(
        self, new: NewTask, now: float, request_id: str = "", *, min_interval: float = 0.0, allow_past: bool = True
    ) -> Task:
        """Add a task. Its schedule is read in its zone; `now` anchors intervals and `in 10m`. An interval
        under `min_interval` needs a pre-check script; a past one-shot needs `allow_past`."""
        existing = self.get(new.id)
        if existing is not None:
            if existing.agent_group == new.agent_group and existing.session_id == new.session_id:
                return existing  # the same create again (a replayed op): nothing to do
            raise TaskError(f"a task with id {new.id} already exists")
        if not new.prompt.strip():
            raise TaskError("the task has no prompt")
        _check_script(new.script)
        anchor = int(now)
        schedule = _parse(new.schedule, new.timezone, anchor)
        _check(sched.check_pace, schedule, gated=bool(new.script.strip()), minimum=min_interval)
        if not allow_past:
            try:
                sched.check_future(schedule, now)
            except sched.ScheduleError as exc:
                raise PastTime(str(exc)) from None
        first = sched.first_run(schedule, anchor)
        with self._tx() as db:
            db.execute(
                "INSERT INTO tasks (id, agent_group, session_id, runner, channel, chat_id, thread_id, prompt, schedule,"
                " timezone, catch_up, status, anchor, next_run, last_run, created_by, created_at, updated_at, script)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, NULL, ?, ?, ?, ?)",
                (
                    new.id,
                    new.agent_group,
                    new.session_id,
                    new.runner,
                    new.channel,
                    new.chat_id,
                    new.thread_id,
                    new.prompt,
                    new.schedule,
                    schedule.zone,
                    new.catch_up,
                    anchor,
                    first,
                    new.created_by,
                    now,
                    now,
                    new.script,
                ),
            )
            if request_id:
                _op(db, request_id, "create", new.id, new.agent_group, now)
        task = self.get(new.id)
        assert task is not None
        return task

    def update(
        self, task: Task, change: Change, now: float, request_id: str = "", *, min_interval: float = 0.0
    ) -> Task:
        if task.status in ("cancelled", "done"):
            raise TaskError(f"task {task.id} is {task.status}; schedule a new one instead")
        if change.script is not None:
            _check_script(change.script)
        text = change.schedule if change.schedule is not None else task.schedule
        zone_name = change.timezone if change.timezone is not None else task.timezone
        script = change.script if change.script is not None else task.script
        anchor, next_run = task.anchor, task.next_run
        if change.schedule is not None or change.script is not None:  # the pace is judged on what results
            _check(
                sched.check_pace, _parse(text, zone_name, int(now)), gated=bool(script.strip()), minimum=min_interval
            )
        if change.schedule is not None or change.timezone is not None:
            anchor = int(now)
            next_run = sched.first_run(_parse(text, zone_name, anchor), anchor)
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET prompt = ?, schedule = ?, timezone = ?, catch_up = ?, anchor = ?,"
                " next_run = ?, updated_at = ?, script = ? WHERE id = ?",
                (
                    change.prompt if change.prompt is not None else task.prompt,
                    text,
                    zone_name,
                    change.catch_up or task.catch_up,
                    anchor,
                    next_run,
                    now,
                    change.script if change.script is not None else task.script,
                    task.id,
                ),
            )
            if request_id:
                _op(db, request_id, "update", task.id, task.agent_group, now)
        return self._reload(task.id)

    def set_status(
        self, task: Task, op: Literal["pause", "resume", "cancel"], now: float, request_id: str = ""
    ) -> Task:
        if task.status in ("cancelled", "done") and op != "cancel":
            raise TaskError(f"task {task.id} is {task.status}; it cannot be {op}d")
        status = _STATUS_AFTER[op]
        next_run = task.next_run
        if op == "resume" and task.status == "paused":
            schedule = task.parsed()
            # Runs that fell in the pause are not owed: resume from now (a one-shot keeps its time).
            next_run = (
                schedule.at if schedule.kind == "once" else sched.next_after(schedule, int(now), anchor=task.anchor)
            )
        with self._tx() as db:
            db.execute(
                "UPDATE tasks SET status = ?, next_run = ?, updated_at = ? WHERE id = ?",
                (task.status if task.status == "done" else status, None if op == "cancel" else next_run, now, task.id),
            )
            if request_id:
                _op(db, request_id, op, task.id, task.agent_group, now)
        return self._reload(task.id)

    def orphaned(self, task_id: str, now: float) -> Task | None:
        """The router dropped a run of the task, its session being no more: an active task is paused (the owner
        may cancel it, or resume it once a session is there again). The task when it was paused now, else None."""
        task = self.get(task_id)
        if task is None or task.status != "active":
            return None
        return self.set_status(task, "pause", now)

    def move_chat(self, channel: str, old_chat_id: str, new_chat_id: str, now: float) -> int:
        """A chat got a new id on its platform (the router's `chat_moved`): its tasks follow it. Returns how many."""
        with self._tx() as db:
            return db.execute(
                "UPDATE tasks SET chat_id = ?, updated_at = ? WHERE channel = ? AND chat_id = ?",
                (new_chat_id, now, channel, old_chat_id),
            ).rowcount

    def record_plan(self, task: Task, plan: Plan, now: float) -> None:
        """Commit what was done with the task's due runs (the wakes are already published)."""
        rows: list[tuple[int, Outcome]] = [*plan.fire, *plan.not_fired]
        last = max((at for at, _ in plan.fire), default=task.last_run)
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO runs (task_id, scheduled_at, outcome, at, detail) VALUES (?, ?, ?, ?, ?)",
                [(task.id, at, outcome, now, "") for at, outcome in rows],
            )
            if plan.unlisted:
                db.execute(
                    "UPDATE runs SET detail = ? WHERE task_id = ? AND scheduled_at = ?",
                    (f"and {plan.unlisted} more not fired", task.id, max(at for at, _ in rows)),
                )
            # Only the row we planned from is advanced: a concurrent update or pause wins.
            db.execute(
                "UPDATE tasks SET next_run = ?, last_run = ?, status = ?, updated_at = ?"
                " WHERE id = ? AND next_run = ? AND status = 'active'",
                (plan.next_run, last, "active" if plan.next_run is not None else "done", now, task.id, task.next_run),
            )
            db.execute(
                "DELETE FROM runs WHERE task_id = ? AND scheduled_at NOT IN"
                " (SELECT scheduled_at FROM runs WHERE task_id = ? ORDER BY scheduled_at DESC LIMIT ?)",
                (task.id, task.id, RUNS_KEPT),
            )

    def _reload(self, task_id: str) -> Task:
        task = self.get(task_id)
        assert task is not None
        return task


def _parse(text: str, zone_name: str, now: int) -> sched.Schedule:
    try:
        return sched.parse(text, zone_name, now)
    except sched.ScheduleError as exc:
        raise TaskError(str(exc)) from None


def _check(check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        check(*args, **kwargs)
    except sched.ScheduleError as exc:
        raise TaskError(str(exc)) from None


def _check_script(script: str) -> None:
    if len(script) > MAX_SCRIPT:
        raise TaskError(f"the pre-check script is longer than {MAX_SCRIPT} characters")
    if "\x00" in script:
        raise TaskError("the pre-check script contains a NUL character")


def _op(db: sqlite3.Connection, request_id: str, op: str, task_id: str, agent_group: str, now: float) -> None:
    db.execute(
        "INSERT OR IGNORE INTO ops VALUES (?, ?, ?, ?, 'applied', '', ?)", (request_id, op, task_id, agent_group, now)
    )


def _task(row: sqlite3.Row) -> Task:
    return Task(**dict(row))
