"""What an agent's outbound row means on the bus. The host trusts nothing in the row it can check:
routes must be the session's own chat (or a destination the runner was told of), files must sit in
the session's outbox (and what goes out is the runner's own copy of them), and message ids are looked up
in the host's own records."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from clawden import safefs, sessiondb, sessionrows
from clawden.bus import events as ev
from clawden.bus import subjects
from services.runner import newagent
from services.runner.sessions import SessionInfo

log = logging.getLogger("clawden.runner.outbound")
MAX_FILE_BYTES = 50 * 1024 * 1024  # what the agent's send_file takes (container/clawden_agent/tools.py)
# Outbound events stay on the stream 7 days (a bridge may take one again until then): a copy outlives them.
KEEP_COPIES = 8 * 86400.0
SENT = ".sent"  # under the sessions folder: no agent group's name starts with a dot (ev.GROUP_PATTERN)


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


def translate(
    info: SessionInfo,
    folder: Path,
    row: sessiondb.OutboundMessage,
    allowed: dict[tuple[str, str], ev.Route],
    runner_id: str = "",
    copies: Path | None = None,
) -> list[Action]:
    """Turn one row into what the runner does; raises Refused for a row it must not act on. `copies`: the host's own
    folder where a file row's files are copied to be sent (`copies_folder`); without it, file rows are refused."""
    route = _route(info, row, allowed)
    key = f"{info.id}:{row.id}"
    content = _content(row)
    if route.channel == ev.AGENT_CHANNEL and not isinstance(content, sessionrows.Chat | sessionrows.TaskRequest):
        return _not_for_agents(row, content)
    answering = _answering(folder, row)
    match content:
        case sessionrows.Chat(text=text, says=says):
            if not _text(text):
                raise Refused("empty message")
            return [
                Publish(
                    subjects.outbound(route.channel, route.chat_id),
                    ev.OutboundMessage(
                        id=key,
                        route=route,
                        text=_text(text),
                        agent_group=info.agent_group,
                        session_id=info.id,
                        seq=row.seq,
                        kind=says,
                        answering=answering,
                    ),
                    key,
                )
            ]
        case sessionrows.File(box=box, files=files, text=text):
            if not files:
                raise Refused("a file row without files")
            paths = _take_files(folder, box, files, None if copies is None else copies / str(row.seq))
            return [
                Publish(
                    subjects.outbound(route.channel, route.chat_id),
                    ev.OutboundMessage(
                        id=key,
                        route=route,
                        text=_text(text),
                        files=paths,
                        agent_group=info.agent_group,
                        session_id=info.id,
                        seq=row.seq,
                        answering=answering,
                    ),
                    key,
                )
            ]
        case sessionrows.Card(title=title, body=body, buttons=buttons):
            card = ev.Card(
                title=_text(title)[:256],
                body=_text(body),
                buttons=tuple(
                    ev.Button(id=(b.id or str(i + 1))[:16], label=b.label[:64]) for i, b in enumerate(buttons)
                ),
            )
            return [
                Publish(
                    subjects.outbound(route.channel, route.chat_id),
                    ev.OutboundMessage(
                        id=key,
                        route=route,
                        text=card.body or card.title,
                        card=card,
                        agent_group=info.agent_group,
                        session_id=info.id,
                        seq=row.seq,
                        answering=answering,
                    ),
                    key,
                )
            ]
        case sessionrows.Edit(target_seq=seq) | sessionrows.Reaction(target_seq=seq):
            target = sessiondb.platform_message_id(folder, seq)
            if target is None:
                raise Refused(f"#{seq} has no platform message id")
            event: ev.Event
            if isinstance(content, sessionrows.Edit):
                row_id = sessiondb.outbound_row_id(folder, seq) if seq % 2 else None
                event = ev.OutboundEdit(
                    id=key,
                    route=route,
                    target_message_id=target,
                    text=_text(content.text),
                    session_id=info.id,
                    seq=row.seq,
                    target_outbound_id=f"{info.id}:{row_id}" if row_id else "",
                )
            else:
                event = ev.OutboundReaction(
                    id=key,
                    route=route,
                    target_message_id=target,
                    emoji=_text(content.emoji)[:32],
                    session_id=info.id,
                    seq=row.seq,
                )
            return [Publish(subjects.outbound(route.channel, route.chat_id), event, key)]
        case sessionrows.Question(request_id=request_id, question=question, options=options, timeout=timeout):
            shown = tuple(o[:64] for o in options)
            card = ev.Card(
                title="Question",
                body=_text(question),
                buttons=tuple(ev.Button(id=str(i + 1), label=o) for i, o in enumerate(shown)),
            )
            return [
                Ask(
                    ev.ApprovalRequest(
                        id=subjects.token(request_id),
                        kind="question",
                        requester="runner",
                        agent_group=info.agent_group,
                        card=card,
                        route=route,
                        # The agent waits `timeout` from when it wrote the row (its clock is the host's), however
                        # late a runner reads it; never from later than now, which the agent could write.
                        expires_at=min(row.created_at, time.time()) + timeout,
                        context={"session_id": info.id, "seq": str(row.seq)},
                    ),
                    shown,
                )
            ]
        case sessionrows.TaskRequest():
            return _task(info, route, content, runner_id)


def _task(info: SessionInfo, route: ev.Route, c: sessionrows.TaskRequest, runner_id: str) -> list[Action]:
    op = c.op
    if op == "create_agent":
        return _create_agent(info, route, c)
    if op not in ("create", "update", "pause", "resume", "cancel", "list"):
        raise Refused(f"unknown task operation {op!r}")
    task = ev.TaskOp(
        op=op,  # type: ignore[arg-type]  # checked against TaskOp's literals above; mypy does not narrow str by `in`
        request_id=c.request_id,
        agent_group=info.agent_group,
        session_id=info.id,
        route=route,
        task_id=c.task_id or None,
        prompt=c.prompt or None,
        schedule=c.schedule or None,
        timezone=c.timezone or None,
        status=c.status,
        created_by=f"agent:{info.agent_group}",
        runner=runner_id,
        script=c.script,
    )
    if op == "list":
        return [ListTasks(c.request_id, task)]
    # Durable: the scheduler applies it whenever it runs; the id makes a replay harmless.
    return [
        Publish(subjects.task(op), task, f"task:{c.request_id}"),
        Respond(c.request_id, {"result": f"{op} of task {task.task_id} is on its way to the scheduler"}),
    ]


def _answering(folder: Path, row: sessiondb.OutboundMessage) -> str:
    """The platform's id of the person's message the row answers (the agent marks each reply with the message it
    answers), or "" when it answers none or that message came without one."""
    if row.in_reply_to is None or row.in_reply_to % 2:
        return ""
    return sessiondb.platform_message_id(folder, row.in_reply_to) or ""


def _content(row: sessiondb.OutboundMessage) -> sessionrows.Outbound:
    try:
        return sessionrows.outbound(row.kind, row.content)
    except msgspec.ValidationError as exc:
        raise Refused(f"#{row.seq} is no {row.kind} row: {exc}") from None


def _create_agent(info: SessionInfo, route: ev.Route, c: sessionrows.TaskRequest) -> list[Action]:
    """A new agent group the agent asks for: a card for an admin (services/runner/newagent.py acts on the
    decision); the agent hears at once that it waits, or why it cannot be asked."""
    try:
        request = newagent.request(info, route, c)
    except newagent.BadRequest as exc:
        return [Respond(c.request_id, {"error": str(exc)})]
    return [
        Publish(subjects.APPROVAL_REQUEST, request, f"approval:{request.id}"),
        Respond(
            c.request_id,
            {
                "result": f"An admin was asked to create agent {c.name!r} ({request.id}); nothing exists until they"
                " approve, and you will be told the outcome in a message."
            },
        ),
    ]


def _not_for_agents(row: sessiondb.OutboundMessage, content: sessionrows.Outbound) -> list[Action]:
    """Another agent group (the router's agent channel) takes text alone: it has no files of this session,
    no buttons to press and no platform messages to edit or react to; a question is answered by its text."""
    why = f"#{row.seq}: another agent group takes text messages only (send_message), not a {row.kind}"
    if isinstance(content, sessionrows.Question):
        return [Respond(content.request_id, {"error": why})]
    raise Refused(why)


def _route(info: SessionInfo, row: sessiondb.OutboundMessage, allowed: dict[tuple[str, str], ev.Route]) -> ev.Route:
    wanted = (row.routing.channel, row.routing.chat_id)
    if wanted in (("", ""), (info.route.channel, info.route.chat_id)):
        return info.route  # the runner's own record of the chat, not the row's copy
    if wanted in allowed:
        return allowed[wanted]
    raise Refused(f"#{row.seq} is addressed to {wanted[0]}:{wanted[1]}, which this session may not reach")


def copies_folder(sessions: Path, info: SessionInfo) -> Path:
    """Where the runner keeps its copies of what the session's file rows send: `<sessions>/.sent/<group>/<session>/
    outbox`, written by the host alone and mounted in no container. Under the sessions folder because that is where
    the bridges take files from (`Delivery.file_roots`), and in a folder named outbox for the web chat's downloads
    (services/web/files.py)."""
    return sessions / SENT / info.agent_group / info.id / "outbox"


def _take_files(folder: Path, box: str, names: tuple[str, ...], into: Path | None) -> tuple[str, ...]:
    """Copy the files `names` of the session's outbox/<box> into the host's folder `into` and name the copies. The
    agent can change its outbox at any moment (a link in place of the outbox, the box or a file, to a host file or
    another session's): each is opened by descriptor, never through a link, the file a regular one, and what goes
    out is what was there when the runner took it, not a path a bridge opens later."""
    for name in (box, *names):
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise Refused(f"unsafe file path {box}/{name}")
    if into is None:
        raise Refused(f"{box}: files are not taken here (no folder to keep their copies in)")
    _forget_old_copies(into.parent)
    into.mkdir(parents=True, exist_ok=True)
    taking = names[0]
    try:
        with (
            safefs.folder(folder) as session,
            safefs.subfolder(session, "outbox") as outbox,
            safefs.subfolder(outbox, box) as source_box,
            safefs.folder(into) as kept,
        ):
            for taking in names:
                with safefs.regular_file(source_box, taking, max_bytes=MAX_FILE_BYTES) as source:
                    safefs.write_copy(source, kept, taking, max_bytes=MAX_FILE_BYTES)
    except OSError as exc:
        raise Refused(f"{box}/{taking} is not a file in the outbox ({exc.strerror or exc})") from None
    return tuple(str(into / name) for name in names)


def _forget_old_copies(kept: Path) -> None:
    """Each row's copies go once no bridge can be handed its event again (KEEP_COPIES)."""
    before = time.time() - KEEP_COPIES
    try:
        rows = list(os.scandir(kept))
    except FileNotFoundError:
        return
    for row in rows:
        if row.is_dir(follow_symlinks=False) and row.stat(follow_symlinks=False).st_mtime < before:
            shutil.rmtree(row.path, ignore_errors=True)


def _text(value: object) -> str:
    return str(value or "")[: ev.MAX_TEXT]
