"""`clawden tasks list|show|add|update|pause|resume|cancel|runs`: scheduled tasks, over NATS
request/reply (`clawden.ctl.scheduler.<verb>`)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from clawden import config as config_mod
from clawden import control
from clawden.bus import events as ev
from clawden.bus.ctl import Verb, router
from clawden.bus.ctl import scheduler as ctl
from clawden.cli.commands._args import LIMIT
from clawden.cli.commands._output import show as _show
from clawden.cli.commands._output import table as _table

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")
if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

CATCH_UP = ("once", "skip")
SCRIPT_HELP = (
    "a bash pre-check run in the agent's container before each run ('-': standard input); its last"
    ' line must be JSON, {"wakeAgent": true, "data": ...} to run with data, {"wakeAgent": false} to skip'
)


def _config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def _ask(args: argparse.Namespace, verb: Verb[Req, Rep], request: Req) -> Rep:
    return control.run(_config(args), verb, request)


def _chat(task: ctl.TaskInfo) -> str:
    return f"{task.channel}:{task.chat_id}" + (f" thread {task.thread_id}" if task.thread_id else "")


def _render_tasks(rows: list[ctl.TaskInfo]) -> str:
    return _table(
        [
            (
                r.id,
                r.agent_group,
                _chat(r),
                r.status,
                r.schedule,
                r.timezone,
                r.catch_up,
                r.next_run_local or "-",
                r.prompt[:40].replace("\n", " "),
            )
            for r in rows
        ],
        ("TASK", "GROUP", "CHAT", "STATUS", "SCHEDULE", "ZONE", "CATCH-UP", "NEXT RUN", "PROMPT"),
    )


TIMES = ("next_run", "last_run", "anchor", "created_at", "updated_at")  # epoch seconds in the service's answer


def _render_task(task: ctl.TaskInfo) -> str:
    """One task, its times on its own clock (`--json` keeps the epochs)."""
    try:
        zone: dt.tzinfo | None = ZoneInfo(task.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = None

    def shown(key: str, value: Any) -> str:
        if key in TIMES:
            return dt.datetime.fromtimestamp(value, zone).strftime("%Y-%m-%d %H:%M:%S %Z").rstrip() if value else "-"
        if key == "script" and value:
            return "\n" + "\n".join(f"  {line}" for line in str(value).splitlines())
        return "-" if value is None or value == "" else str(value)

    lines = [f"chat: {_chat(task)}"]
    lines += [
        f"{k}: {shown(k, v)}"
        for k, v in msgspec.to_builtins(task).items()
        if k not in ("next_run_local", "channel", "chat_id", "thread_id")
    ]
    return "\n".join(lines)


def tasks_list(args: argparse.Namespace) -> int:
    request = ctl.ListRequest(agent_group=args.group or "", status=args.status or "")
    return _show(args, _ask(args, ctl.TASKS, request), _render_tasks)


def tasks_show(args: argparse.Namespace) -> int:
    return _show(args, _ask(args, ctl.GET, ctl.TaskRef(task_id=args.task_id)), _render_task)


def _session(args: argparse.Namespace) -> router.Session:
    """The conversation the task's runs join: the router's record of it (its chat and runner)."""
    sessions = _ask(args, router.SESSIONS_LIST, router.GroupFilter(agent_group=args.group or "", limit=10_000))
    if args.session:
        found = [s for s in sessions if s.id == args.session]
        if not found:
            raise control.ControlError(f"no session {args.session} (see `clawden sessions`)")
        return found[0]
    group = args.group or "main"
    found = [s for s in sessions if s.agent_group == group]
    if not found:
        raise control.ControlError(
            f"agent group {group} has no conversation yet: talk to it first, or give --session (see `clawden sessions`)"
        )
    # The owner's own terminal, where someone surely reads it; else the group's most recent chat.
    terminal = [s for s in found if (s.channel, s.chat_id, s.thread_id or "") == ("local", "terminal", "")]
    return (terminal or found)[0]


def tasks_add(args: argparse.Namespace) -> int:
    session = _session(args)
    request = ctl.AddRequest(
        agent_group=session.agent_group,
        session_id=session.id,
        runner=session.runner,
        route=ev.Route(channel=session.channel, chat_id=session.chat_id, thread_id=session.thread_id or None),
        prompt=args.prompt,
        schedule=args.schedule,
        catch_up=args.catch_up,
        timezone=args.tz or "",
        script=_script(args.script) if args.script else "",
        allow_past=args.now,
    )
    task = _ask(args, ctl.ADD, request)
    return _show(
        args,
        task,
        lambda t: f"scheduled {t.id} in {t.channel}:{t.chat_id}, next run {t.next_run_local or '-'}",
    )


def tasks_update(args: argparse.Namespace) -> int:
    script = "" if args.no_script else _script(args.script) if args.script else None
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("prompt", args.prompt),
            ("schedule", args.schedule),
            ("timezone", args.tz),
            ("catch_up", args.catch_up),
            ("script", script),
        )
        if value is not None
    }
    if not changes:
        raise control.ControlError(
            "nothing to change: give --prompt, --schedule, --tz, --catch-up, --script or --no-script"
        )
    task = _ask(args, ctl.UPDATE, ctl.UpdateRequest(task_id=args.task_id, **changes))
    return _show(args, task, lambda t: _render_tasks([t]))


def _script(path: str) -> str:
    """A pre-check script from a file, or from standard input with `-`."""
    try:
        return sys.stdin.read() if path == "-" else Path(path).expanduser().read_text()
    except OSError as exc:
        raise control.ControlError(f"cannot read the script {path}: {exc.strerror}") from None


def _status(verb: Verb[ctl.TaskRef, ctl.TaskInfo]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        task = _ask(args, verb, ctl.TaskRef(task_id=args.task_id))
        return _show(
            args,
            task,
            lambda t: f"{t.id} is {t.status}" + (f", next run {t.next_run_local}" if t.next_run_local else ""),
        )

    return run


def tasks_runs(args: argparse.Namespace) -> int:
    runs = _ask(args, ctl.RUNS, ctl.RunsRequest(task_id=args.task_id, limit=args.limit))
    return _show(
        args,
        runs,
        lambda rows: _table(
            [
                (r.scheduled, r.outcome, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at)), r.detail)
                for r in rows
            ],
            ("SCHEDULED (UTC)", "OUTCOME", "DECIDED AT", "DETAIL"),
        ),
    )


def register(sub: Sub) -> None:
    p = sub.add_parser("tasks", help="scheduled tasks: list, show, add, update, pause, resume, cancel, runs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=tasks_list, group=None, status=None)
    verbs = p.add_subparsers(dest="tasks_verb", metavar="VERB")

    def verb(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=help_text)
        # SUPPRESS: `clawden tasks --json list` keeps the flag given before the verb.
        v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        v.set_defaults(func=func)
        return v

    v = verb("list", "list tasks", tasks_list)
    v.add_argument("--group", help="only this agent group's")
    v.add_argument("--status", choices=("active", "paused", "done", "cancelled"), help="only tasks in this state")
    verb("show", "one task in full", tasks_show).add_argument("task_id")
    v = verb("add", "schedule a prompt for an agent group's conversation", tasks_add)
    v.add_argument(
        "schedule",
        help="cron ('0 8 * * 1'), 'every 30m' (1m at least, unless --script decides each "
        "run), an ISO time ('2025-06-01T08:00') or 'in 10m'",
    )
    v.add_argument("prompt", help="what the agent is asked when the task runs")
    v.add_argument(
        "--session",
        help="the conversation to run in (default: the group's in the owner's terminal, "
        "else its most recent; see `clawden sessions`)",
    )
    v.add_argument("--group", help="agent group (default: main, or the session's)")
    v.add_argument("--tz", help="IANA time zone for cron and naive times (default: the scheduler host's)")
    v.add_argument(
        "--catch-up",
        dest="catch_up",
        choices=CATCH_UP,
        default="once",
        help="for runs due while the scheduler was down or the machine asleep: run once (default), or skip them",
    )
    v.add_argument("--script", metavar="FILE", help=SCRIPT_HELP)
    v.add_argument(
        "--now", action="store_true", help="accept a time already past (the task then runs once, right away)"
    )
    v = verb("update", "change a task's prompt, schedule, zone or catch-up policy", tasks_update)
    v.add_argument("task_id")
    v.add_argument("--prompt", help="the new prompt")
    v.add_argument("--schedule", help="the new schedule (as for `tasks add`)")
    v.add_argument("--tz", help="the new IANA time zone")
    v.add_argument(
        "--catch-up",
        dest="catch_up",
        choices=CATCH_UP,
        help="for runs due while the scheduler was down or the machine asleep: run once, or skip",
    )
    v.add_argument("--script", metavar="FILE", help=SCRIPT_HELP)
    v.add_argument("--no-script", dest="no_script", action="store_true", help="remove the pre-check script")
    verb("pause", "stop a task from running until resumed", _status(ctl.PAUSE)).add_argument("task_id")
    verb("resume", "resume a paused task (runs missed while paused are not made up)", _status(ctl.RESUME)).add_argument(
        "task_id"
    )
    verb("cancel", "cancel a task for good", _status(ctl.CANCEL)).add_argument("task_id")
    v = verb("runs", "a task's run log, most recent first", tasks_runs)
    v.add_argument("task_id")
    v.add_argument("--limit", type=LIMIT, default=50, help="the newest N runs (default 50)")
