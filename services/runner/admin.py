"""The `clawden` command inside an agent container, served on the host: one Unix stream socket per session
(`run/admin/<session>/admin.sock`, the folder mounted read-only at `/run/clawden/admin`), whose identity is the
socket itself, so the session and its agent group are the runner's own knowledge, never the request's. Each
request is one JSON line (`{"argv": [...]}`) checked against the group's `cli_scope` (`scope.py`): reads are
answered at once through the typed control client, writes become an approval request and run only once one who
approves for the group they change does (its admins, global admins, owners), and every call, allowed or refused, is
an `AuditEvent` naming the session and the group."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shlex
import socket
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from clawden import control, logs, sessiondb, unixsock
from clawden.backoff import backoff
from clawden.bus import Retry, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Verb
from clawden.bus.ctl import router as router_api
from clawden.bus.ctl import scheduler as scheduler_api
from clawden.registry import installed_channels
from clawden.runtime import ServiceContext, sleep_unless_stopping
from services.runner import scope
from services.runner.sessions import (
    SessionIndex,
    SessionInfo,
    UnsafeSessionFolder,
    cli_writes_in,
    forget_cli_write,
    holds,
    record_cli_write,
    told,
)

log = logging.getLogger("clawden.runner.admin")
SOCKET_NAME = "admin.sock"
MAX_LINE = 64 * 1024
ASK_TIMEOUT = 10.0
AUDIT_KIND = "cli"
MAX_WAITING = 5  # writes of one session waiting for an admin at once
ROUTER_AWAY = 2.0  # seconds before a decided write the router did not answer for is tried again
REPUBLISH_CAP = 30.0  # the longest wait between two tries of an approval request the bus did not take
# Cards of their own for what the agent's tools ask (install_packages, add_mcp_server).
TITLES = {"groups packages add": "asks to install packages", "groups mcp add": "asks for an MCP server"}

Note = Callable[[SessionInfo, str, str], Awaitable[None]]  # (session, key, text): a word to the agent
# A write the runner does itself rather than through a control verb (an image build): (session, command, the
# approval) in, the words for the agent out, or None when the doer tells the agent itself once done (a build
# runs in the background, so no other decision waits for it) and then calls `AdminDesk.done`.
Doer = Callable[[SessionInfo, scope.Command, ev.ApprovalDecision], Awaitable[str | None]]


class CliRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the container's `clawden` sends: its arguments, nothing else (no caller, group or scope)."""

    argv: list[str]


class CliReply(msgspec.Struct, frozen=True, omit_defaults=True):
    ok: bool
    output: str = ""  # a read's answer, as JSON text
    error: str = ""
    pending: str = ""  # a write's approval request id: the agent is told the outcome later


_decode = msgspec.json.Decoder(CliRequest).decode
_encode = msgspec.json.Encoder().encode


def write_id(session_id: str, argv: list[str], nonce: str) -> str:
    """A write's approval id (pure): a nonce, and a digest of the session and the command with it, so that the
    runner a session moves to can tell the command an admin was shown from one the agent wrote into its folder
    since (`checks_out`)."""
    digest = hashlib.sha256(json.dumps([session_id, argv, nonce]).encode()).hexdigest()[:24]
    return f"cli-{nonce}-{digest}"


def checks_out(request_id: str, session_id: str, argv: list[str]) -> bool:
    """Whether the approval id is the one `write_id` gives this session's command (pure)."""
    nonce, _, _ = request_id.removeprefix("cli-").partition("-")
    return request_id.startswith("cli-") and write_id(session_id, argv, nonce) == request_id


def outcome_key(request_id: str) -> str:
    """The note that tells the agent what became of its write (one row per key: told once)."""
    return f"cli-outcome-{request_id}"


def approval_request(info: SessionInfo, request_id: str, write: scope.Write) -> ev.ApprovalRequest:
    """The approval request for a session's write (pure, so a request asked again is the same card). It is the
    changed group's: its admins decide (then global admins and owners), never the asking group's alone; the card
    says which agent asked."""
    line, target, asker = write.command.line(), write.command.group, info.agent_group
    title = f"Agent {asker} {TITLES.get(write.command.name, 'asks to run a command')}"
    body = f"{line}\n\n{write.change}"
    if target != asker:
        title += f" for agent group {target}"
        if write.command.name in TITLES:  # the change says the asking session restarts: not for another group
            body += (
                f"\nAsked for another group: the asking session, of agent group {asker}, does not restart;"
                f" agent group {target}'s containers take it at their next start."
            )
    return ev.ApprovalRequest(
        id=request_id,
        kind="agent_request",
        requester="runner",
        agent_group=target,
        card=ev.Card(
            title=title,
            body=f"{body}\n\n(asked in {info.route.channel} chat {info.route.chat_id})",
            buttons=(ev.Button(id="approve", label="Approve"), ev.Button(id="deny", label="Deny", style="danger")),
        ),
        route=info.route,
        context={"session_id": info.id, "channel": info.route.channel, "command": line},
    )


class _Moved(Exception):
    """The session was moved to another runner: its write is that runner's to carry out."""


WIRE_FIELDS = {
    "--engage": "engage_mode",
    "--pattern": "engage_pattern",
    "--scope": "sender_scope",
    "--ignored": "ignored_messages",
    "--session": "session_mode",
    "--priority": "priority",
}


def read_request(command: scope.Command) -> tuple[Verb[Any, Any], msgspec.Struct]:
    """The control verb and request a read is (pure)."""
    a = command.args
    group = a.get("--group", "")
    limit = {"limit": int(a["--limit"])} if "--limit" in a else {}
    match command.name:
        case "groups list":
            return router_api.GROUPS_LIST, router_api.ListAll()
        case "groups get":
            return router_api.GROUPS_GET, router_api.GroupGet(name=a["agent_group"])
        case "tasks list":
            return scheduler_api.TASKS, scheduler_api.ListRequest(agent_group=group, status=a.get("--status", ""))
        case "sessions":
            return router_api.SESSIONS_LIST, router_api.GroupFilter(agent_group=group, **limit)
        case "destinations list":
            return router_api.DESTINATIONS_LIST, router_api.GroupFilter(agent_group=group)
        case "members list":
            return router_api.MEMBERS_LIST, router_api.GroupFilter(agent_group=group)
        case "wire list":
            return router_api.WIRINGS_LIST, router_api.WiringList(
                channel=a.get("--channel", ""), chat_id=a.get("--chat", ""), agent_group=group
            )
        case "dropped":
            return router_api.DROPPED_LIST, router_api.DroppedList(channel=a.get("--channel", ""), **limit)
    raise ValueError(f"{command.name} is not a read")


def write_request(command: scope.Command) -> tuple[Verb[Any, Any], msgspec.Struct]:
    """The control verb and request a write is (pure)."""
    a = command.args
    group = a["agent_group"]
    match command.name:
        case "wire add":
            options: dict[str, Any] = {field: a[flag] for flag, field in WIRE_FIELDS.items() if flag in a}
            if "priority" in options:
                options["priority"] = int(options["priority"])
            return router_api.WIRINGS_CREATE, router_api.WiringCreate(
                channel=a["channel"], chat_id=a["chat_id"], agent_group=group, **options
            )
        case "wire remove":
            return router_api.WIRINGS_DELETE, router_api.WiringDelete(
                channel=a["channel"], chat_id=a["chat_id"], agent_group=group
            )
        case "members add":
            return router_api.MEMBERS_ADD, router_api.MemberAdd(agent_group=group, user_id=a["user"], added_by="agent")
        case "members remove":
            return router_api.MEMBERS_REMOVE, router_api.MemberRemove(agent_group=group, user_id=a["user"])
        case "destinations add":
            return router_api.DESTINATIONS_ADD, router_api.DestinationAdd(
                agent_group=group,
                name=a["name"],
                channel=a["channel"],
                chat_id=a["chat_id"],
                thread_id=a.get("--thread"),
                display_name=a.get("--display-name", ""),
                max_hops=int(a.get("--max-hops", "0")),
            )
        case "destinations remove":
            return router_api.DESTINATIONS_REMOVE, router_api.DestinationRemove(agent_group=group, name=a["name"])
        case "groups update":
            container = scope.container_settings(a)
            return router_api.GROUPS_UPDATE, router_api.GroupUpdate(
                name=group,
                model=a.get("--model"),
                assistant_name=a.get("--assistant-name"),
                container=msgspec.convert(container, router_api.ContainerSettings) if container else None,
            )
    raise ValueError(f"{command.name} is not a write")


def channels() -> frozenset[str]:
    """The channels a wiring or chat destination may name, as the owner's CLI has them: the terminal's, and
    each bridge installed here."""
    return frozenset({"local", *installed_channels()})


def only(rows: Any, group: str) -> Any:
    """An answer narrowed to one group's rows (the scope's filter, kept even where the service applied it)."""
    if not group:
        return rows
    if not isinstance(rows, list):
        return rows if _group_of(rows) == group else None
    return [r for r in rows if _group_of(r) == group]


def _group_of(row: Any) -> Any:
    return getattr(row, "agent_group", getattr(row, "name", None))


class AdminDesk:
    """The sessions' admin sockets and what comes in on them."""

    def __init__(
        self,
        ctx: ServiceContext,
        index: SessionIndex,
        run_dir: Path,
        owner_uid: int | None,
        note: Note,
        session_dir: Callable[[SessionInfo], Path],
    ) -> None:
        self.ctx, self.index, self.run_dir, self.owner_uid, self.note = ctx, index, run_dir, owner_uid, note
        # The session's folder, where its waiting writes are kept for whichever runner holds it.
        self.folder = session_dir
        self.servers: dict[str, asyncio.Server] = {}
        self.counters = {"reads": 0, "writes_asked": 0, "writes_done": 0, "refused": 0}
        self.doers: dict[str, Doer] = {}  # by command name; the runner fills it in
        # Decisions being carried out here (a build runs on after `on_decision`): one read back at an adoption and
        # brought by the durable as well is done once.
        self.doing: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # approval requests the bus did not take yet, tried again

    # --- sockets ----------------------------------------------------------------------------------

    async def open(self, info: SessionInfo) -> Path | None:
        """Listen on the session's admin socket and return its folder, to be mounted (again after a restart: the
        folder is mounted, not the file, so a new socket is seen). Outside the session folder, which the agent
        can write: it can neither replace the socket nor make the runner's bind fail. None if it cannot be
        opened: the container starts anyway, without `clawden`."""
        folder = self.run_dir / info.id
        if info.id in self.servers:
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
            sock = unixsock.bind(folder / SOCKET_NAME, socket.SOCK_STREAM, mode=0o600, owner=self.owner_uid)
        except OSError as exc:
            log.error("session %s: no admin socket (%s)", info.id, exc, extra=logs.context(info.id, info.agent_group))
            return None

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(info, reader, writer)

        self.servers[info.id] = await asyncio.start_unix_server(serve, sock=sock, limit=MAX_LINE)
        return folder

    def close(self, session_id: str) -> None:
        server = self.servers.pop(session_id, None)
        if server is not None:
            server.close()
            # The folder stays: a container still running (the runner stops, the container lives on) keeps it
            # mounted, and the next runner binds a new socket in it.
            with contextlib.suppress(OSError):
                (self.run_dir / session_id / SOCKET_NAME).unlink()

    def close_all(self) -> None:
        for session_id in list(self.servers):
            self.close(session_id)
        for task in self.tasks:  # their writes stay kept: the next start asks again (`resume`)
            task.cancel()

    async def _serve(self, info: SessionInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    reply = await self.handle(info, line)
                except Exception as exc:  # ours, not the agent's: it hears so instead of waiting for nothing
                    log.exception("cli request of session %s failed", info.id, extra={"session_id": info.id})
                    reply = CliReply(ok=False, error=f"the host failed to answer ({type(exc).__name__})")
                writer.write(_encode(reply) + b"\n")
                await writer.drain()
        except (ValueError, asyncio.LimitOverrunError):  # a line over MAX_LINE
            await self._audit(info, "refused", "", f"a request longer than {MAX_LINE} bytes")
            with contextlib.suppress(OSError):
                writer.write(
                    _encode(CliReply(ok=False, error=f"refused: a request longer than {MAX_LINE} bytes")) + b"\n"
                )
        except (ConnectionError, OSError):
            pass  # the agent went away mid-answer
        finally:
            writer.close()

    # --- requests ---------------------------------------------------------------------------------

    async def handle(self, info: SessionInfo, line: bytes) -> CliReply:
        """One request from the session's socket: always an answer, always an audit event."""
        try:
            argv = _decode(line).argv
        except msgspec.DecodeError as exc:  # ValidationError too: a field we do not take (a forged caller)
            return await self._refuse(info, "", f"bad request: {exc}")
        if argv in (["help"], ["--help"], ["-h"]):
            return await self._help(info)
        try:
            command = scope.parse(argv)
        except scope.BadCommand as exc:
            return await self._refuse(info, " ".join(argv)[:200], str(exc))
        try:
            cli_scope = await self.cli_scope(info.agent_group)
        except control.ControlError as exc:
            return await self._refuse(info, command.line(), f"cannot check this group's cli_scope: {exc}")
        match scope.allow(cli_scope, info.agent_group, command):
            case scope.Refuse(reason=reason):
                return await self._refuse(info, command.line(), reason)
            case scope.Read() as read:
                return await self._read(info, read)
            case scope.Write() as write if why := scope.channel_problem(write.command, channels()):
                return await self._refuse(info, command.line(), why)
            case scope.Write() as write:
                return await self._ask(info, argv, write)
        raise AssertionError("unreachable")

    async def cli_scope(self, agent_group: str) -> str:
        """The group's setting as the router has it now, so a change counts at the agent's next call."""
        group = await control.ask_on(
            self.ctx.nc, router_api.GROUPS_GET, router_api.GroupGet(name=agent_group), timeout=ASK_TIMEOUT
        )
        return group.container.cli_scope or scope.DEFAULT_SCOPE

    async def _help(self, info: SessionInfo) -> CliReply:
        try:
            cli_scope = await self.cli_scope(info.agent_group)
        except control.ControlError as exc:
            return await self._refuse(info, "clawden help", f"cannot check this group's cli_scope: {exc}")
        lines = scope.commands_for(cli_scope)
        await self._audit(info, "read", "clawden help", "")
        text = "\n".join(lines) if lines else f"the clawden command is disabled for agent group {info.agent_group}"
        return CliReply(ok=bool(lines), output=text if lines else "", error="" if lines else text)

    async def _refuse(self, info: SessionInfo, line: str, reason: str) -> CliReply:
        self.counters["refused"] += 1
        await self._audit(info, "refused", line, reason)
        return CliReply(ok=False, error=f"refused: {reason}")

    async def _read(self, info: SessionInfo, read: scope.Read) -> CliReply:
        verb, request = read_request(read.command)
        try:
            rows = await control.ask_on(self.ctx.nc, verb, request, timeout=ASK_TIMEOUT)
        except control.ControlError as exc:
            await self._audit(info, "failed", read.command.line(), str(exc))
            return CliReply(ok=False, error=str(exc))
        self.counters["reads"] += 1
        await self._audit(info, "read", read.command.line(), "")
        output = msgspec.json.format(msgspec.json.encode(only(rows, read.only_group)), indent=2)
        return CliReply(ok=True, output=output.decode())

    async def _ask(self, info: SessionInfo, argv: list[str], write: scope.Write) -> CliReply:
        line = write.command.line()
        if await self.index.run(self.index.cli_writes_waiting, info.id) >= MAX_WAITING:
            # An agent in a loop would otherwise bury its admins in cards.
            return await self._refuse(info, line, f"{MAX_WAITING} commands already wait for an admin's decision")
        request_id = write_id(info.id, argv, uuid.uuid4().hex[:16])
        # Kept before the request goes out, so that no decision comes for a write not kept: in the folder for the
        # runner the session may move to, and in runner.db for this one.
        try:
            await asyncio.to_thread(record_cli_write, self.folder(info), request_id, argv)
        except sessiondb.Fenced as moved:
            return await self._refuse(info, line, f"this conversation moved to runner {moved.fence.runner}")
        await self.index.run(self.index.put_cli_write, request_id, info.id, argv)
        sent = await self._send(approval_request(info, request_id, write))
        self.counters["writes_asked"] += 1
        await self._audit(info, "asked", line, "", approval=request_id)
        asked = "an admin was asked" if sent else "an admin will be asked, once the bus takes the request,"
        return CliReply(
            ok=True,
            pending=request_id,
            output=f"approval pending ({request_id}): {asked} to approve `{line}`;"
            " you will be told the outcome in a message",
        )

    async def _send(self, request: ev.ApprovalRequest) -> bool:
        """Publish a write's approval request; whether it went out now. One the bus does not take is tried again in
        the background, with growing waits, until it does or the runner stops (its next start asks again:
        `resume`), so a kept write always has its card and its slot is freed by a decision. Every try has the
        same id, which the stream and the approvals service keep to one card."""
        if await self._publish(request):
            return True
        task = asyncio.create_task(self._publish_until_taken(request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return False

    async def _publish(self, request: ev.ApprovalRequest) -> bool:
        try:
            await publish(self.ctx.js, subjects.APPROVAL_REQUEST, request, msg_id=f"approval:{request.id}")
        except Exception as exc:  # NATS away, the stream refusing or not answering: tried again, and said
            log.warning("the approval request %s did not go out (%s); it is tried again", request.id, exc)
            return False
        return True

    async def _publish_until_taken(self, request: ev.ApprovalRequest) -> None:
        tries = 0
        while await sleep_unless_stopping(self.ctx.stopping, backoff(tries, cap=REPUBLISH_CAP)):
            if await self._publish(request):
                return
            tries += 1

    async def _ask_again(self, info: SessionInfo, request_id: str, argv: list[str]) -> None:
        """A kept write's approval request published again: a runner may have stopped between keeping the write and
        publishing it. A request that went out is the same one again (`approval_request`), so it makes no card."""
        try:
            command = scope.own(scope.parse(argv), info.agent_group)
            write = scope.Write(command, scope.change(command))
        except ValueError:  # not a write as this runner's commands are (an older runner's): its decision says so
            return
        await self._send(approval_request(info, request_id, write))

    # --- decisions --------------------------------------------------------------------------------

    async def on_decision(self, decision: ev.ApprovalDecision) -> bool:
        """An admin's word on a waiting write: run it (checked again: the scope may have changed) and tell
        the agent. False when the decision is not about one of ours. The decision is kept with the write until
        the agent has the outcome, so a runner that stops in between does it again when it starts (`resume`), and
        so does this one when the router did not answer (`Retry`). Only the runner holding the session's folder
        acts: one it was moved away from forgets the write, which the runner it moved to took over (`take_over`)."""
        waiting = await self.index.run(self.index.cli_write, decision.id)
        if waiting is None:
            return False
        if decision.id in self.doing:
            return True
        # Claimed before the next await: the same decision brought twice at once (the durable's delivery, and
        # resume()'s or an adoption's read-back) is carried out once.
        self.doing.add(decision.id)
        carrying = False
        try:
            carrying = await self._take(decision, *waiting)
        finally:
            if not carrying:
                self.doing.discard(decision.id)
        return True

    async def _take(self, decision: ev.ApprovalDecision, session_id: str, argv: list[str]) -> bool:
        """Carry out a decided write; True once it is (`done` lets go of its claim: a build's once built), False
        when there is nothing for this runner to do."""
        info = self.index.get(session_id)
        if info is None:
            await self.index.run(self.index.done_cli_write, decision.id)
            return False
        if await self.index.run(self.index.decide_cli_write, decision) is None:
            return False  # another decision had the write
        try:
            await self._carry_out(decision, info, argv)
        except _Moved:
            log.info(
                "the decided `clawden %s` of %s is left to the runner its session moved to",
                shlex.join(argv),
                info.id,
                extra=logs.context(info.id, info.agent_group, decision.id),
            )
            await self.index.run(self.index.done_cli_write, decision.id)
            return False
        return True

    async def resume(self) -> None:
        """At start: the waiting writes' approval requests published again (a stopped runner may not have published
        one; each session's first MAX_WAITING, as many as it may have asked), then the writes an admin decided that
        a stopped runner had not finished, done again. A build starts over; a router write asks again (the router's
        writes set a value, so a second ask is harmless)."""
        asked: dict[str, int] = {}
        for request_id, session_id, argv in await self.index.run(self.index.undecided_cli_writes):
            asked[session_id] = asked.get(session_id, 0) + 1
            if (info := self.index.get(session_id)) is not None and asked[session_id] <= MAX_WAITING:
                await self._ask_again(info, request_id, argv)
        for decision, session_id, argv in await self.index.run(self.index.decided_cli_writes):
            log.info("doing again the decided `clawden %s` of %s", shlex.join(argv), session_id)
            await self._redo(decision, session_id, argv)

    async def _redo(self, decision: ev.ApprovalDecision, session_id: str, argv: list[str]) -> None:
        while True:
            try:
                await self.on_decision(decision)
                return
            except Retry as exc:  # the router away: still decided, done once it answers
                log.info("the decided `clawden %s` of %s waits: %s", shlex.join(argv), session_id, exc)
                if not await sleep_unless_stopping(self.ctx.stopping, exc.delay):
                    return
            except Exception:  # left decided, for the decision's redelivery or the next start
                log.exception("the decided `clawden %s` of %s failed again", shlex.join(argv), session_id)
                return

    async def take_over(self, info: SessionInfo) -> list[str]:
        """At an adoption (the runner holds the folder now): the writes the session's old runner asked an admin
        about and had not finished, kept in its folder, recorded in runner.db as if asked here, so that their
        decisions are carried out here, and their requests published again (the old runner may have stopped before
        it published one); their approval ids. A row that does not check out against its id (the agent wrote it)
        is no write an admin was shown; one whose outcome the agent has is over. The agent can write rows that do
        check out, so no more are asked about than it could have asked for itself."""
        folder = self.folder(info)
        taken: list[str] = []
        for request_id, argv in await asyncio.to_thread(cli_writes_in, folder):
            if not checks_out(request_id, info.id, argv):
                log.warning("session %s: a waiting write in its folder is not the one asked (%s)", info.id, request_id)
            elif await asyncio.to_thread(told, folder, outcome_key(request_id)):
                await asyncio.to_thread(forget_cli_write, folder, request_id)
            else:
                await self.index.run(self.index.put_cli_write, request_id, info.id, argv)
                taken.append(request_id)
                if len(taken) <= MAX_WAITING:
                    await self._ask_again(info, request_id, argv)
        return taken

    async def done(self, decision: ev.ApprovalDecision, info: SessionInfo, text: str) -> None:
        """The outcome to the agent (once: the note's key is the decision's), then the write is over."""
        await self.note(info, outcome_key(decision.id), text)
        try:
            await asyncio.to_thread(forget_cli_write, self.folder(info), decision.id)
        except sessiondb.Fenced:
            pass  # moved (the note was not written either): the runner it moved to does the write and tells
        except (sqlite3.Error, OSError, UnsafeSessionFolder) as exc:  # left there: the note says it is over
            log.warning("session %s: the write %s stays in its folder (%s)", info.id, decision.id, exc)
        await self.index.run(self.index.done_cli_write, decision.id)
        self.doing.discard(decision.id)

    async def _carry_out(self, decision: ev.ApprovalDecision, info: SessionInfo, argv: list[str]) -> None:
        await self._still_held(info)
        try:
            text = await self._decided(info, decision, argv)
        except scope.BadCommand as exc:  # asked of an older runner whose commands were different
            text = f"Your command `clawden {shlex.join(argv)}` cannot run any more: {exc}"
        except control.NoAnswer as exc:  # the router away: no outcome yet, the write stays decided
            raise Retry(
                f"the decided `clawden {shlex.join(argv)}` of {info.id} waits for the router: {exc}", delay=ROUTER_AWAY
            ) from exc
        if text is not None:
            await self.done(decision, info, text)

    async def _still_held(self, info: SessionInfo) -> None:
        """Raise _Moved once the session's folder is another runner's (checked again right before the write: the
        router's answer on the group's scope may take a while)."""
        if not await asyncio.to_thread(holds, self.folder(info)):
            raise _Moved

    async def _decided(self, info: SessionInfo, decision: ev.ApprovalDecision, argv: list[str]) -> str | None:
        command = scope.parse(argv)  # it parsed when asked; the parser is the same
        line = command.line()
        if decision.decision != "approved":
            why = f" ({decision.reason})" if decision.reason else ""
            by = f" by {decision.decided_by}" if decision.decided_by else ""
            await self._audit(info, decision.decision, line, decision.reason, approval=decision.id)
            return f"Your command `{line}` was {decision.decision}{by}{why}; nothing was changed."
        try:
            verdict = scope.allow(await self.cli_scope(info.agent_group), info.agent_group, command)
        except control.NoAnswer:
            raise
        except control.ControlError as exc:  # refused: the group is gone, say
            verdict = scope.Refuse(f"cannot check this group's cli_scope: {exc}")
        if isinstance(verdict, scope.Refuse):
            await self._audit(info, "refused", line, verdict.reason, approval=decision.id)
            return f"Your command `{line}` was approved, but is no longer allowed: {verdict.reason}."
        await self._still_held(info)
        if command.name in self.doers:  # with the group it names, its own written out
            text = await self.doers[command.name](info, verdict.command, decision)
            await self._audit(info, "done", line, "", approval=decision.id, by=decision.decided_by)
            return text
        verb, request = write_request(verdict.command)
        try:
            done = await control.ask_on(self.ctx.nc, verb, request, timeout=ASK_TIMEOUT)
        except control.NoAnswer:
            raise
        except control.ControlError as exc:  # refused: only the router's word is final
            await self._audit(info, "failed", line, str(exc), approval=decision.id)
            return f"Your command `{line}` was approved by {decision.decided_by}, but failed: {exc}"
        self.counters["writes_done"] += 1
        await self._audit(info, "done", line, "", approval=decision.id, by=decision.decided_by)
        result = msgspec.json.encode(done).decode()
        return f"Your command `{line}` was approved by {decision.decided_by} and done: {result}"

    # --- audit ------------------------------------------------------------------------------------

    async def _audit(self, info: SessionInfo, outcome: str, line: str, reason: str, **more: str) -> None:
        fields = {"session_id": info.id, "agent_group": info.agent_group, "outcome": outcome, "command": line}
        fields |= {k: v for k, v in ({"reason": reason} | more).items() if v}
        summary = f"agent group {info.agent_group}: {line or 'a request'} {outcome}" + (f": {reason}" if reason else "")
        log.log(
            logging.WARNING if outcome == "refused" else logging.INFO,
            "cli %s",
            summary,
            extra=logs.context(info.id, info.agent_group, "") | {"cli_outcome": outcome},
        )
        event = ev.AuditEvent(service="runner", kind=AUDIT_KIND, at=time.time(), summary=summary, fields=fields)
        try:
            await self.ctx.nc.publish(subjects.event("runner", AUDIT_KIND), ev.encode(event))
        except Exception as exc:  # logged above; the bus copy is lost, and that is said
            log.error("cannot publish the audit event of %s: %s", summary, exc)
