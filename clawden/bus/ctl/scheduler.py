"""The scheduler's control verbs (`clawden.ctl.scheduler.<verb>`): an agent's task list (asked by the runner),
and the tasks and runs behind `clawden tasks`."""

from __future__ import annotations

from typing import Literal

from clawden.bus import events as ev
from clawden.bus.ctl.verb import Reply, Request, declare

SERVICE = "scheduler"

CatchUp = Literal["skip", "once"]
TaskStatus = Literal["active", "paused", "done", "cancelled"]


class ListRequest(Request, frozen=True):
    agent_group: str = ""
    status: str = ""


class TaskRef(Request, frozen=True):
    task_id: str


class RunsRequest(Request, frozen=True):
    task_id: str
    limit: int = 50


class AddRequest(Request, frozen=True):
    # As a due run names them (`TaskDue`): a task whose runs the router would refuse is refused when it is added.
    agent_group: ev.GroupName
    session_id: ev.SessionId
    route: ev.Route
    prompt: str
    schedule: str
    runner: str = ""
    timezone: str = ""
    catch_up: CatchUp = "once"
    script: str = ""
    allow_past: bool = False  # a one-shot time already past runs at once (`tasks add --now`)


class UpdateRequest(Request, frozen=True):
    task_id: str
    prompt: str | None = None
    schedule: str | None = None
    timezone: str | None = None
    catch_up: CatchUp | None = None
    script: str | None = None


class AgentTasks(Reply, frozen=True, omit_defaults=True):
    """An agent's tasks as text for the agent (`result`), or why not (`error`): never an error reply."""

    result: str = ""
    error: str = ""


class TaskInfo(Reply, frozen=True):
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
    catch_up: CatchUp
    created_by: str
    script: str
    status: TaskStatus
    anchor: int
    next_run: int | None
    last_run: int | None
    created_at: float
    updated_at: float
    next_run_local: str | None


class Run(Reply, frozen=True):
    task_id: str
    scheduled_at: int
    outcome: Literal["fired", "caught_up", "missed", "skipped"]
    at: float
    detail: str
    scheduled: str  # scheduled_at in ISO 8601


AGENT_LIST = declare(SERVICE, "list", ev.TaskOp, AgentTasks)
TASKS = declare(SERVICE, "tasks", ListRequest, list[TaskInfo])
GET = declare(SERVICE, "get", TaskRef, TaskInfo)
RUNS = declare(SERVICE, "runs", RunsRequest, list[Run])
ADD = declare(SERVICE, "add", AddRequest, TaskInfo)
UPDATE = declare(SERVICE, "update", UpdateRequest, TaskInfo)
PAUSE = declare(SERVICE, "pause", TaskRef, TaskInfo)
RESUME = declare(SERVICE, "resume", TaskRef, TaskInfo)
CANCEL = declare(SERVICE, "cancel", TaskRef, TaskInfo)
