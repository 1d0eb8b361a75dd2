"""`create_agent`: a new agent group an agent asks for, made only once an admin approves.

The card shows the name, the chat it would answer and its whole CLAUDE.md. Its approval id names the session
and a digest of exactly that, so what runs is what was approved: at the decision the runner reads the request
again from the session's outbound.db (which the agent can write) and acts only on a row with that digest. The
request is made for the new group's name, which has no admins yet, so only global admins and owners decide.
Approved: the router creates the group (folder: its name) and keeps the instructions as its starter memory, the
runner writes its CLAUDE.md (never over one that is there) and, if asked, the router wires the chat to it. The agent
is told the outcome in a message. Whichever runner later starts the group's containers (on another host, say)
writes the CLAUDE.md from the group's settings where its folder has none (`write_starter`)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nats.aio.client import Client

from clawden import control, logs, sessiondb, sessionrows
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import router as router_api
from clawden.setup import write_new_memory
from services.runner.sessions import SessionIndex, SessionInfo, holds, told

log = logging.getLogger("clawden.runner.newagent")
OP = "create_agent"
PREFIX = "na-"
MAX_INSTRUCTIONS = router_api.MAX_STARTER_MEMORY  # they become the group's starter memory, sent with every wake
ASK_TIMEOUT = 10.0
MEMORY = "CLAUDE.md"

Note = Callable[[SessionInfo, str, str], Awaitable[None]]


class BadRequest(ValueError):
    """A request no admin should be asked about; the message is for the agent."""


@dataclass(frozen=True, slots=True)
class NewAgent:
    name: str
    instructions: str
    wire_to: ev.Route | None


def parse(c: sessionrows.TaskRequest) -> NewAgent:
    """The request's fields, checked (pure)."""
    if not ev.GROUP_NAME.match(c.name):
        raise BadRequest(
            f"name {c.name!r}: 1-40 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    if not c.instructions.strip() or len(c.instructions) > MAX_INSTRUCTIONS:
        raise BadRequest(f"instructions: give the new agent's CLAUDE.md, at most {MAX_INSTRUCTIONS} characters")
    return NewAgent(c.name, c.instructions, _chat(c.wire_to) if c.wire_to else None)


def _chat(text: str) -> ev.Route:
    channel, _, chat_id = text.partition(":")
    try:
        subjects.token(channel)
    except ValueError:
        chat_id = ""
    if not chat_id or chat_id != chat_id.strip() or len(chat_id) > 256 or chat_id == "*":
        raise BadRequest(f"wire_to {text!r}: give one chat as '<channel>:<chat id>', e.g. telegram:12345")
    return ev.Route(channel=channel, chat_id=chat_id)


def digest(session_id: str, agent: NewAgent) -> str:
    wire = [agent.wire_to.channel, agent.wire_to.chat_id] if agent.wire_to else None
    blob = json.dumps([session_id, agent.name, agent.instructions, wire]).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def approval_id(session_id: str, agent: NewAgent) -> str:
    return f"{PREFIX}{session_id}-{digest(session_id, agent)}"


def request(info: SessionInfo, route: ev.Route, c: sessionrows.TaskRequest) -> ev.ApprovalRequest:
    """The approval request for the agent's row (pure); BadRequest if it cannot be one."""
    agent = parse(c)
    request_id = approval_id(info.id, agent)
    try:
        subjects.token(request_id)
    except ValueError:
        raise BadRequest(f"session {info.id} cannot ask for a new agent (its id is too long)") from None
    wire = f"It would answer {agent.wire_to.channel} chat {agent.wire_to.chat_id}." if agent.wire_to else ""
    body = (
        f"Agent {info.agent_group} asks for a new agent group {agent.name!r} (folder groups/{agent.name}). {wire}\n\n"
        f"Its instructions (CLAUDE.md):\n{agent.instructions}\n\n(asked in {route.channel} chat {route.chat_id})"
    )
    return ev.ApprovalRequest(
        id=request_id,
        kind="agent_request",
        requester="runner",
        # The new group's name: it has no admins, so its approvers are the global admins and the owners.
        agent_group=agent.name,
        card=ev.Card(
            title=f"Create agent {agent.name}?",
            body=body,
            buttons=(ev.Button(id="approve", label="Create"), ev.Button(id="deny", label="Deny", style="danger")),
        ),
        route=route,
        context={"session_id": info.id, "channel": route.channel, "create_agent": agent.name},
    )


def session_of(approval: str) -> str | None:
    """The session an approval id of ours names; None for anyone else's."""
    if not approval.startswith(PREFIX):
        return None
    session_id, _, _ = approval[len(PREFIX) :].rpartition("-")
    return session_id or None


def note_key(approval: str) -> str:
    """The note that tells the agent the outcome (one row per key: told once, and once told, it is done)."""
    return f"create-agent-{approval}"


def requests(folder: Path, session_id: str) -> dict[str, NewAgent]:
    """The create_agent requests in the session's outbound.db, by approval id."""
    with sessiondb.opened(folder / sessiondb.OUTBOUND, readonly=True) as conn:
        rows = conn.execute("SELECT content FROM messages_out WHERE kind = 'task'").fetchall()
    found: dict[str, NewAgent] = {}
    for (content,) in rows:
        try:
            row = sessionrows.outbound("task", json.loads(content))
            agent = parse(row) if isinstance(row, sessionrows.TaskRequest) and row.op == OP else None
        except (ValueError, msgspec.ValidationError):
            continue
        if agent is not None:
            found.setdefault(approval_id(session_id, agent), agent)
    return found


def find(folder: Path, session_id: str, approval: str) -> NewAgent | None:
    """The request in the session's outbound.db that this approval is for, if it is there unchanged."""
    return requests(folder, session_id).get(approval)


def untold(folder: Path, session_id: str) -> list[str]:
    """The approval ids of the session's requests whose outcome the agent has not been told (at an adoption: the
    ones a decision may still be waiting for, or came for before the move)."""
    if not (folder / sessiondb.OUTBOUND).exists():
        return []
    return [a for a in requests(folder, session_id) if _carded(a) and not told(folder, note_key(a))]


def _carded(approval: str) -> bool:
    """Whether a card could go out for the approval id (`request` refuses one too long for a subject)."""
    try:
        subjects.token(approval)
    except ValueError:
        return False
    return True


def write_memory(groups_dir: Path, agent: NewAgent) -> None:
    """groups/<name>/CLAUDE.md with the instructions (`setup.write_new_memory`'s rules); a file already there
    is never replaced, and raises."""
    if not write_new_memory(groups_dir, agent.name, agent.instructions):
        path = groups_dir / agent.name / MEMORY
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))


def write_starter(group_dir: Path, memory: str) -> bool:
    """At a container start: the group's CLAUDE.md from the starter memory its settings carry, where its folder
    has none (the group was made on another host, or writing it at once failed). Never over a file that is there
    (the owner's edits), never through a link. True if written."""
    return bool(memory) and write_new_memory(group_dir.parent, group_dir.name, memory)


class AgentMaker:
    """Acts on the decisions about `create_agent` requests."""

    def __init__(
        self, nc: Client, index: SessionIndex, session_dir: Callable[[SessionInfo], Path], groups_dir: Path, note: Note
    ) -> None:
        self.nc, self.index, self.session_dir, self.groups_dir, self.note = nc, index, session_dir, groups_dir, note
        self.counters = {"created": 0, "refused": 0}
        # Decisions being acted on here: one read back at an adoption and brought by the durable as well is one.
        self.doing: set[str] = set()

    async def on_decision(self, decision: ev.ApprovalDecision) -> bool:
        """False when the decision is not about a request of ours. Acted on once: not again once the agent was
        told the outcome, nor by a runner the session moved away from (the one it moved to reads the decision back
        when it adopts the session, `untold`, or has it from its durable)."""
        session_id = session_of(decision.id)
        info = self.index.get(session_id) if session_id else None
        if info is None:
            return session_id is not None
        if decision.id in self.doing:
            return True
        self.doing.add(decision.id)
        try:
            await self._act(info, decision)
        finally:
            self.doing.discard(decision.id)
        return True

    async def take_over(self, info: SessionInfo) -> list[str]:
        """At an adoption: the approval ids of the session's requests whose outcome the agent was not told (their
        decisions, given before the move or after, are acted on here)."""
        return await asyncio.to_thread(untold, self.session_dir(info), info.id)

    async def _act(self, info: SessionInfo, decision: ev.ApprovalDecision) -> None:
        folder = self.session_dir(info)
        context = logs.context(info.id, info.agent_group, decision.id)
        if await asyncio.to_thread(told, folder, note_key(decision.id)):
            log.info("create_agent %s: done already (the agent was told)", decision.id, extra=context)
            return
        if not await asyncio.to_thread(holds, folder):
            log.info("create_agent %s: left to the runner session %s moved to", decision.id, info.id, extra=context)
            return
        agent = await asyncio.to_thread(find, folder, info.id, decision.id)
        text = await self._decided(info, decision, agent)
        log.info("create_agent %s: %s", decision.id, text, extra=context)
        await self.note(info, note_key(decision.id), text)

    async def _decided(self, info: SessionInfo, decision: ev.ApprovalDecision, agent: NewAgent | None) -> str:
        if agent is None:
            self.counters["refused"] += 1
            return "Your create_agent request is no longer what the admin was shown; nothing was created."
        by = f" by {decision.decided_by}" if decision.decided_by else ""
        if decision.decision != "approved":
            why = f" ({decision.reason})" if decision.reason else ""
            return f"Your request for agent {agent.name!r} was {decision.decision}{by}{why}; nothing was created."
        try:
            create = router_api.GroupCreate(name=agent.name, folder=agent.name, starter_memory=agent.instructions)
            await control.ask_on(self.nc, router_api.GROUPS_CREATE, create, timeout=ASK_TIMEOUT)
        except control.ControlError as exc:
            return f"Your request for agent {agent.name!r} was approved{by}, but it could not be created: {exc}"
        self.counters["created"] += 1
        done = f"Agent {agent.name!r} was created (approved{by})"
        try:  # at once, so an owner on this host can read it now; the group's runner writes it at a start anyway
            await asyncio.to_thread(write_memory, self.groups_dir, agent)
        except FileExistsError:
            done += ", but its folder here had a CLAUDE.md already, kept as it was"
        except OSError as exc:
            log.warning("create_agent %s: CLAUDE.md not written here (%s); its runner writes it", agent.name, exc)
        if agent.wire_to is None:
            return done + "."
        route = agent.wire_to
        try:
            wire = router_api.WiringCreate(channel=route.channel, chat_id=route.chat_id, agent_group=agent.name)
            await control.ask_on(self.nc, router_api.WIRINGS_CREATE, wire, timeout=ASK_TIMEOUT)
        except control.ControlError as exc:
            return f"{done}, but not wired to {route.channel} chat {route.chat_id}: {exc}"
        return f"{done} and answers {route.channel} chat {route.chat_id}."
