"""What an agent's outbound row means on the bus. The host trusts nothing in the row it can check:
routes must be the session's own chat (or a destination the runner was told of), files must sit in
the session's outbox, and message ids are looked up in the host's own records."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus import subjects
from services.runner.sessions import SessionInfo

log = logging.getLogger("clawden.runner.outbound")


@dataclass(frozen=True)
class Publish:
    subject: str
    event: ev.Event
    msg_id: str


@dataclass(frozen=True)
class Respond:
    """Answer the agent at once (in its inbound.db)."""

    request_id: str
    content: dict[str, Any]


@dataclass(frozen=True)
class Ask:
    """Forward a question to the approvals engine; the answer comes back as a decision."""

    request: ev.ApprovalRequest
    options: tuple[str, ...]


@dataclass(frozen=True)
class ListTasks:
    request_id: str
    op: ev.TaskOp


Action = Publish | Respond | Ask | ListTasks


class Refused(ValueError):
    pass


def translate(info: SessionInfo, folder: Path, row: sessiondb.OutboundMessage,
              allowed: dict[tuple[str, str], ev.Route], runner_id: str = "") -> list[Action]:
    """Turn one row into what the runner does; raises Refused for a row it must not act on."""
    route = _route(info, row, allowed)
    key = f"{info.id}:{row.id}"
    c = row.content
    match row.kind:
        case "chat":
            text = _text(c.get("text"))
            if not text:
                raise Refused("empty message")
            return [Publish(subjects.outbound(route.channel, route.chat_id), ev.OutboundMessage(
                id=key, route=route, text=text, agent_group=info.agent_group, session_id=info.id, seq=row.seq), key)]
        case "file":
            paths = tuple(str(_outbox_file(folder, str(c.get("box", "")), str(n))) for n in c.get("files") or [])
            if not paths:
                raise Refused("a file row without files")
            return [Publish(subjects.outbound(route.channel, route.chat_id), ev.OutboundMessage(
                id=key, route=route, text=_text(c.get("text")), files=paths, agent_group=info.agent_group,
                session_id=info.id, seq=row.seq), key)]
        case "card":
            buttons = tuple(ev.Button(id=str(b.get("id", i + 1))[:16], label=str(b.get("label", ""))[:64])
                            for i, b in enumerate(c.get("buttons") or []) if isinstance(b, dict))
            card = ev.Card(title=_text(c.get("title"))[:256], body=_text(c.get("body")), buttons=buttons)
            return [Publish(subjects.outbound(route.channel, route.chat_id), ev.OutboundMessage(
                id=key, route=route, text=card.body or card.title, card=card, agent_group=info.agent_group,
                session_id=info.id, seq=row.seq), key)]
        case "edit" | "reaction":
            target = sessiondb.platform_message_id(folder, int(c.get("target_seq", 0)))
            if target is None:
                raise Refused(f"#{c.get('target_seq')} has no platform message id")
            event: ev.Event
            if row.kind == "edit":
                event = ev.OutboundEdit(id=key, route=route, target_message_id=target, text=_text(c.get("text")),
                                        session_id=info.id, seq=row.seq)
            else:
                event = ev.OutboundReaction(id=key, route=route, target_message_id=target,
                                            emoji=_text(c.get("emoji"))[:32], session_id=info.id, seq=row.seq)
            return [Publish(subjects.outbound(route.channel, route.chat_id), event, key)]
        case "question":
            request_id = str(c.get("request_id", ""))
            options = tuple(str(o)[:64] for o in c.get("options") or [])
            timeout = float(c.get("timeout", 300))
            card = ev.Card(title="Question", body=_text(c.get("question")),
                           buttons=tuple(ev.Button(id=str(i + 1), label=o) for i, o in enumerate(options)))
            return [Ask(ev.ApprovalRequest(
                id=subjects.token(request_id), kind="question", requester="runner", agent_group=info.agent_group,
                card=card, route=route, expires_at=time.time() + timeout,
                context={"session_id": info.id, "seq": str(row.seq)}), options)]
        case "task":
            return _task(info, route, c, runner_id)
    raise Refused(f"unknown kind {row.kind!r}")


def _task(info: SessionInfo, route: ev.Route, c: dict[str, Any], runner_id: str) -> list[Action]:
    request_id = str(c.get("request_id", ""))
    op = str(c.get("op", ""))
    if op not in ("create", "update", "pause", "resume", "cancel", "list"):
        raise Refused(f"unknown task operation {op!r}")
    task = ev.TaskOp(
        op=op,  # type: ignore[arg-type]  # checked against TaskOp's literals above; mypy does not narrow str by `in`
        request_id=request_id, agent_group=info.agent_group, session_id=info.id, route=route,
        task_id=c.get("task_id") or None, prompt=c.get("prompt") or None, schedule=c.get("schedule") or None,
        timezone=c.get("timezone") or None, status=str(c.get("status") or ""), created_by=f"agent:{info.agent_group}",
        runner=runner_id, script=c["script"] if isinstance(c.get("script"), str) else None)
    if op == "list":
        return [ListTasks(request_id, task)]
    # Durable: the scheduler applies it whenever it runs; the id makes a replay harmless.
    return [Publish(subjects.task(op), task, f"task:{request_id}"),
            Respond(request_id, {"result": f"{op} of task {task.task_id} is on its way to the scheduler"})]


def _route(info: SessionInfo, row: sessiondb.OutboundMessage, allowed: dict[tuple[str, str], ev.Route]) -> ev.Route:
    wanted = (row.routing.channel, row.routing.chat_id)
    if wanted in (("", ""), (info.route.channel, info.route.chat_id)):
        return info.route  # the runner's own record of the chat, not the row's copy
    if wanted in allowed:
        return allowed[wanted]
    raise Refused(f"#{row.seq} is addressed to {wanted[0]}:{wanted[1]}, which this session may not reach")


def _outbox_file(folder: Path, box: str, name: str) -> Path:
    outbox = (folder / "outbox").resolve()
    path = folder / "outbox" / box / name
    # The agent writes this folder: no links, nothing outside its outbox.
    if "/" in box or box in ("", ".", "..") or path.is_symlink() or (folder / "outbox" / box).is_symlink():
        raise Refused(f"unsafe file path {box}/{name}")
    if not path.resolve().is_relative_to(outbox) or not path.is_file():
        raise Refused(f"{box}/{name} is not a file in the outbox")
    return path


def _text(value: object) -> str:
    return str(value or "")[: ev.MAX_TEXT]
