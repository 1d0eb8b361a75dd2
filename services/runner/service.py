"""The runner process: wakes sessions, runs their containers, relays what the agents say.

Flow per session: a wake is written into `inbound.db`, the container is started if none runs,
and its doorbell rung; when the agent rings back, new `outbound.db` rows are published on the
bus in order and the cursor advanced. A slow poll over live sessions is only the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import msgspec
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NotFoundError

from clawden import control, logs, safefs, sessiondb, sessionrows, skills, unixsock
from clawden.agentcontainer import PROJECT_SETTINGS, Tuning, VaultTransport, container_user, vault_transport
from clawden.backoff import backoff
from clawden.bus import ConsumeStats, Retry, bind, consume, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import runner as runner_api
from clawden.bus.ctl import scheduler as scheduler_api
from clawden.bus.ctl import vault as vault_api
from clawden.bus.streams import runner_decisions, runner_receipts, runner_wake
from clawden.config import GroupConfig
from clawden.runtime import ServiceContext, sleep_unless_stopping
from services.runner import core, heartbeat
from services.runner.admin import AdminDesk
from services.runner.containers import (
    LABEL_SESSION,
    ContainerSpec,
    Died,
    Docker,
    GroupRun,
    ImageMissing,
    group_folder,
    group_run,
    mcp_failed,
)
from services.runner.images import Installer
from services.runner.mounts import Allowlist, ExtraMount, MountRefused, MountRequest, resolve
from services.runner.newagent import AgentMaker, write_starter
from services.runner.outbound import Action, Ask, ListTasks, Publish, Refused, Respond, copies_folder, translate
from services.runner.sessions import (
    SessionIndex,
    SessionInfo,
    UnsafeSessionFolder,
    adopt_conversation,
    check_files,
    chown_tree,
    claim_folder,
    listen_bell,
    prepare_folder,
    ring,
)
from services.runner.vaultroute import (
    VaultRoute,
    new_token,
    place_token,
    socket_route,
    tcp_problem,
    tcp_route,
    trust_folder,
)

log = logging.getLogger("clawden.runner")
START_GATE_SECONDS = 20.0  # a start slot is held at most this long (an agent stuck coming up)
# Seconds between SIGTERM and SIGKILL for a container: the agent interrupts Claude Code (2 s) and the
# SDK's own close waits for it to exit (up to 5 s more), with room to spare on a busy machine.
STOP_GRACE = 15
MAX_INBOX_BYTES = 50 * 1024 * 1024
START_ATTEMPTS = 5  # failed container starts in a row before a session's messages fail
# Seconds before a wake whose session folder stayed locked is taken again: the wake durable's 20 deliveries then
# outlast an NFS lock lease (90 s) that a frozen host leaves behind.
LOCKED_RETRY = 10.0


@dataclass
class Waiting:
    """A session waiting for a container slot (or for its crash backoff to pass)."""

    info: SessionInfo
    folder: Path
    since: float = field(default_factory=time.monotonic)
    not_before: float = 0.0
    told: bool = False


@dataclass
class Live:
    """A session whose container runs (or is starting)."""

    info: SessionInfo
    folder: Path
    container_id: str = ""
    bell: asyncio.DatagramTransport | None = None
    last_activity: float = field(default_factory=time.monotonic)
    last_wake: float = field(default_factory=time.monotonic)
    stopping: bool = False
    hung: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # the agent rang: it is up
    since: float = field(default_factory=time.monotonic)  # when it took its slot
    draining: bool = False  # asked to finish its turn and leave (`_drain_one`); still watched for hangs
    epoch: int = 0  # the placement its container was started under (0: not known, one found at a restart)

    @property
    def state(self) -> runner_api.ContainerState:
        if self.stopping or self.draining:
            return "stopping" if self.stopping else "draining"
        return "running" if self.container_id else "starting"


class Runner:
    def __init__(self, ctx: ServiceContext, docker: Docker, index: SessionIndex) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.docker = docker
        self.index = index
        self.live: dict[str, Live] = {}
        self.session_locks: dict[str, asyncio.Lock] = {}
        self.pump_locks: dict[str, asyncio.Lock] = {}
        self.pump_dirty: set[str] = set()
        # Sessions whose last pump did not publish every row (NATS did not answer): pumped by the safety poll until
        # it does, live or not (a container that died meanwhile leaves its last replies to no ring).
        self.unpublished: set[str] = set()
        self.user, self.owner_uid = container_user()
        self.userns_mode: str | None = None  # "host" on a remapped engine, at start
        self.tasks: set[asyncio.Task[None]] = set()
        self.queue: dict[str, Waiting] = {}  # insertion order is arrival order
        self.changed = asyncio.Event()
        self.making_room = False
        self.starting = asyncio.Semaphore(self.cfg.runner.parallel_starts or os.cpu_count() or 2)
        self.failures: dict[str, int] = {}  # consecutive start failures or crashes per session
        # Sessions moved to another runner (their folder's fence names a later placement): nothing more is done
        # for them here until a claim at a later epoch brings one back.
        self.moved: dict[str, sessiondb.Fence] = {}
        self.engine_cpus: int | None = None  # what Docker's engine has; set once it answered
        self.vault_transport: VaultTransport = "socket"  # from [runner] vault_transport and the engine, at start
        self.vault_reached = True  # whether containers here reach the vault, as last probed (probing_vault)
        self.counters = {
            "wakes": 0,
            "started": 0,
            "published": 0,
            "crashed": 0,
            "hung": 0,
            "idle_stopped": 0,
            "queue_notices": 0,
        }
        # The in-container `clawden`: one socket per session under run/admin/, never in the agent's writable folder.
        self.admin = AdminDesk(ctx, index, self.cfg.path("run", "admin"), self.owner_uid, self.note, self.session_dir)
        # `create_agent`: new agent groups an agent asks for, made once an admin approves (newagent.py).
        self.maker = AgentMaker(ctx.nc, index, self.session_dir, self.cfg.groups_dir, self.note)
        # Packages an agent asks for: its group's image built again once an admin approves (images.py).
        self.installer = Installer(ctx.nc, index, self.cfg.runner.image, self.restart_session, self.admin.done)
        self.admin.doers["groups packages add"] = self.installer.do
        self.admin.doers["groups mcp add"] = self.installer.add_server

    # --- paths ----------------------------------------------------------------------------------

    def session_dir(self, info: SessionInfo) -> Path:
        return self.cfg.sessions_dir / info.agent_group / info.id

    def claude_home(self, info: SessionInfo) -> Path:
        # The session's Claude Code state (its conversation) outlives containers. One per session:
        # Claude Code's ~/.claude.json does not survive concurrent writers. Kept out of the group
        # folder so the agent's memory stays readable.
        return self.cfg.state_dir.joinpath(info.agent_group, "homes", info.id)

    def group_run(self, agent_group: str) -> GroupRun:
        """How this group's containers run now: the router's last settings for it (kept in runner.db,
        so a wake without them or a restart finds them), over config.toml's."""
        return group_run(agent_group, self.index.group_settings(agent_group), self.cfg, engine_cpus=self.engine_cpus)

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(_logged(self._unless_moved(coro), name), name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- placement fencing ------------------------------------------------------------------------

    async def claim(self, info: SessionInfo, epoch: int) -> bool:
        """Take or hold the session's folder at `epoch` before anything is written into it (`sessiondb.claim`),
        and keep the epoch in runner.db; False, with the session dropped here, when a later placement holds it."""
        try:
            await asyncio.to_thread(claim_folder, self.session_dir(info), epoch, self.cfg.runner.id)
        except sessiondb.Fenced as moved:
            if moved.fence.runner == self.cfg.runner.id and moved.fence.epoch > epoch:
                # A wake older than this runner's own later placement of the session (redelivered after a retry,
                # or sent on a placement read before the session moved away and back): the session is ours, and
                # its message is written under the epoch held (a message already there is the same row again).
                return await self.claim(info, moved.fence.epoch)
            self.drop(info.id, moved.fence)
            return False
        self.moved.pop(info.id, None)
        held = sessiondb.held(self.session_dir(info))
        await self.index.run(self.index.put, info)
        await self.index.run(self.index.set_epoch, info.id, held.epoch if held else 0)
        return True

    @contextlib.contextmanager
    def fenced_off(self) -> Iterator[None]:
        """Around whatever the runner does for a session: a write (or a check) that finds the session moved to
        another runner drops it here instead of failing (the folder's name is the session's id)."""
        try:
            yield
        except sessiondb.Fenced as moved:
            self.drop(moved.folder.name, moved.fence)

    async def _unless_moved(self, coro: Coroutine[Any, Any, object]) -> None:
        with self.fenced_off():
            await coro

    def drop(self, session_id: str, fence: sessiondb.Fence) -> None:
        """The session was moved to another runner: stop its container on this host, take it off the queue and
        the live table, say so once, and do nothing more for it."""
        if session_id not in self.moved:
            log.warning(
                "session %s moved to runner %s at epoch %d: dropped here (its container stopped, nothing more is"
                " written or sent for it)",
                session_id,
                fence.runner,
                fence.epoch,
                extra={"session_id": session_id},
            )
        self.moved[session_id] = fence
        self.queue.pop(session_id, None)
        self.failures.pop(session_id, None)
        live = self.live.get(session_id)
        if live is not None:
            live.stopping, live.hung = True, False  # its death, if Docker reports one, is no crash
            self._forget(session_id)
            if live.container_id:
                self._spawn(self.docker.stop_and_remove(live.container_id, timeout=1), f"drop-{session_id}")
        self.changed.set()

    async def _still_ours(self, info: SessionInfo) -> None:
        """Before what no folder transaction covers (a publish, a container start): raise Fenced if moved. A
        folder that cannot be read says nothing either way (the notice that says so must still go)."""
        with contextlib.suppress(sqlite3.Error, OSError, UnsafeSessionFolder):
            await asyncio.to_thread(_check_fence, self.session_dir(info))

    # --- wakes ----------------------------------------------------------------------------------

    async def on_wake(self, wake: ev.Wake | ev.Adopt, msg: Msg) -> None:
        """What the router (or an older scheduler) sends on this runner's wake subject."""
        with self.fenced_off():
            if isinstance(wake, ev.Adopt):
                await self.on_adopt(wake)
            else:
                await self._on_wake(wake)

    async def _on_wake(self, wake: ev.Wake) -> None:
        self.counters["wakes"] += 1
        info = SessionInfo(wake.session_id, wake.agent_group, wake.route)
        # The message as its bridge named it (`<channel>:<platform id>`), as the router logged it too.
        message = (
            f"{wake.route.channel}:{wake.message.platform_message_id}"
            if wake.message.platform_message_id
            else wake.message.id
        )
        log.info(
            "wake %s for session %s of %s",
            wake.key,
            info.id,
            info.agent_group,
            extra=logs.context(info.id, info.agent_group, message),
        )
        lock = self.session_locks.setdefault(info.id, asyncio.Lock())
        async with lock:
            folder = self.session_dir(info)
            try:
                if not await self.claim(info, wake.epoch):
                    return  # moved to another runner: acked, and nothing done (`drop` logged it)
                await self._record(info, wake.destinations, wake.group)
                await asyncio.to_thread(self._store_wake, folder, wake)
            except (UnsafeSessionFolder, sessiondb.SchemaError, sqlite3.DatabaseError) as exc:
                await self._refused(info, f"wake-refused-{wake.key}", exc)
                return
            if wake.message.trigger and wake.message.kind == "chat":
                # "typing…" in the chat until the answer: a hint for its bridge, never worth failing a wake.
                with contextlib.suppress(Exception):
                    await publish(
                        self.ctx.js,
                        subjects.outbound(wake.route.channel, wake.route.chat_id),
                        ev.Typing(id=f"typing:{wake.key}", route=wake.route, at=time.time(), session_id=info.id),
                        msg_id=f"typing:{wake.key}",
                    )
            if not wake.message.trigger:
                return  # context only (an accumulated message): it waits for the next real one
            live = self.live.get(info.id)
            if live is not None:
                live.last_activity = live.last_wake = time.monotonic()
                await asyncio.to_thread(ring, folder)
            else:
                self.want(info, folder)

    async def on_adopt(self, adopt: ev.Adopt) -> None:
        """The router moved a session here from a runner declared gone (shared storage): fence its folder at the
        new epoch (the old runner writes nothing more into it), record it as a wake does, publish what the old
        runner had not, start a container if the folder holds unanswered messages, and carry out the admins'
        decisions given before the move on what the agent asked the old runner for."""
        info = SessionInfo(adopt.session_id, adopt.agent_group, adopt.route)
        log.info(
            "adopting session %s of %s from runner %s at epoch %d",
            info.id,
            info.agent_group,
            adopt.from_runner,
            adopt.epoch,
            extra={"session_id": info.id, "agent_group": info.agent_group},
        )
        async with self.session_locks.setdefault(info.id, asyncio.Lock()):
            folder = self.session_dir(info)
            try:
                if not await self.claim(info, adopt.epoch):
                    return
                await self._record(info, adopt.destinations, adopt.group)
                await asyncio.to_thread(self._store_route, folder, adopt.route, adopt.destinations)
                await self._take_over_questions(info, folder, adopt.from_runner)
                decided = await self._take_over_approvals(info, adopt.from_runner)
                unanswered = await asyncio.to_thread(sessiondb.has_unanswered, folder)
            except (UnsafeSessionFolder, sessiondb.SchemaError, sqlite3.DatabaseError) as exc:
                await self._refused(info, f"adopt-refused-{adopt.key}", exc)
                return
        live = self.live.get(info.id)
        if live is not None and live.epoch != adopt.epoch:  # moved away and back: its container holds an older one
            await self.restart_session(info.id)
        self._spawn(self.pump(info.id), f"pump-{info.id}")  # rows the old runner had not published
        if unanswered:
            self.want(info, folder)
        for decision in decided:  # with the lock let go: what the agent is told of it is a note, which takes it
            await self.on_decision(decision)

    async def _take_over_questions(self, info: SessionInfo, folder: Path, from_runner: str) -> None:
        """The questions the old runner published and nobody has answered, recorded here as if this runner had
        asked them (`put_question`), so that their decisions, which reach every runner's decisions durable, are
        written into the session here. A decision this runner's durable took before that record was dropped (the
        id was unknown here), but it is still on the stream: the last one on each question's subject is answered
        now. Answering twice is harmless: a response row is keyed by its request (`sessiondb.respond`), and
        `take_question` gives a question to one decision only."""
        rows = await asyncio.to_thread(sessiondb.unanswered_questions, folder)
        allowed = await self.index.run(self.index.destinations, info.id) if rows else {}
        now = time.time()
        asks = [ask for row in rows if (ask := open_ask(info, folder, row, allowed, now)) is not None]
        for ask in asks:
            await self.index.run(self.index.put_question, ask.request.id, info.id, ask.options)
        for ask in asks:
            decision = await self._last_decision(ask.request.id)
            log.info(
                "session %s: question %s, asked on runner %s, %s",
                info.id,
                ask.request.id,
                from_runner,
                "was answered before the move: the answer is written now" if decision else "is answered here",
                extra={"session_id": info.id},
            )
            if decision is not None:
                await self.on_decision(decision)

    async def _take_over_approvals(self, info: SessionInfo, from_runner: str) -> list[ev.ApprovalDecision]:
        """The agent's `clawden` writes waiting for an admin (kept in its folder: `AdminDesk.take_over`) and its
        create_agent requests it was not told the outcome of (`AgentMaker.take_over`), taken over as the questions
        are: their decisions reach this runner's durable and are carried out here from now on, and the ones given
        before (which the durable took while the id was unknown here) are read back from the stream, to be carried
        out once the adoption is done. Once: the old runner acts only while it holds the folder (`sessions.holds`),
        and what the agent was told the outcome of is over."""
        asked = await self.admin.take_over(info) + await self.maker.take_over(info)
        decided: list[ev.ApprovalDecision] = []
        for request_id in asked:
            decision = await self._last_decision(request_id)
            log.info(
                "session %s: %s, asked on runner %s, %s",
                info.id,
                request_id,
                from_runner,
                "was decided before the move: it is carried out now" if decision else "is decided here",
                extra={"session_id": info.id},
            )
            if decision is not None:
                decided.append(decision)
        return decided

    async def _last_decision(self, request_id: str) -> ev.ApprovalDecision | None:
        """The last decision on the stream for an approval (a direct get by subject); None when there is none
        yet, or what is there is no decision for it. A bus that does not answer retries the whole adoption."""
        subject = subjects.approval_decision(request_id)
        try:
            msg = await self.ctx.js.get_last_msg(runner_decisions(self.cfg.runner.id).stream, subject, direct=True)
        except NotFoundError:
            return None
        except (NatsTimeoutError, NoRespondersError, APIError) as exc:
            raise Retry(f"cannot read the decisions on {subject} ({exc!r}); trying again", delay=2.0) from exc
        try:
            decision = ev.decoder_for(ev.ApprovalDecision).decode(msg.data or b"")
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("skipping an unreadable decision on %s: %s", subject, exc)
            return None
        return decision if decision.id == request_id else None

    async def _record(
        self, info: SessionInfo, destinations: tuple[ev.Destination, ...] | None, group: ev.GroupSettings | None
    ) -> None:
        """What a wake or an adoption says of its session, kept in runner.db (`claim` put the session)."""
        if group is not None:  # None: the sender does not know them; keep the last ones
            await self.index.run(self.index.set_group_settings, info.agent_group, group)
        if destinations is not None:  # None: the sender does not know them; keep what we have
            await self.index.run(self.index.set_destinations, info.id, [d.route for d in destinations])

    async def _refused(self, info: SessionInfo, key: str, exc: Exception) -> None:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            # Another writer held the folder past the busy timeout (a runner stopped mid-write, slow shared
            # storage): nothing is damaged, and the wake or adoption is taken again later.
            raise Retry(f"session {info.id}: its folder is locked ({exc}); trying again", delay=LOCKED_RETRY)
        log.error("session %s folder refused: %s", info.id, exc, extra={"session_id": info.id})
        await self._tell(
            info,
            key,
            "Sorry — this conversation's storage is damaged, so I can't answer. "
            "The operator has to look at the runner's log.",
            "error",
        )

    def _store_route(
        self, folder: Path, route: ev.Route, destinations: tuple[ev.Destination, ...] | None
    ) -> sessiondb.Routing:
        prepare_folder(folder, self.owner_uid)
        routing = sessiondb.Routing(route.channel, route.chat_id, route.thread_id)
        sessiondb.set_routing(folder, routing)
        if destinations is not None:  # None: the sender does not know them; keep what we have
            sessiondb.set_destinations(
                folder,
                {
                    d.name: (
                        d.display_name or d.name,
                        sessiondb.Routing(d.route.channel, d.route.chat_id, d.route.thread_id),
                    )
                    for d in destinations
                },
            )
        return routing

    def _store_wake(self, folder: Path, wake: ev.Wake) -> None:
        routing = self._store_route(folder, wake.route, wake.destinations)
        m = wake.message
        content: dict[str, object] = {"text": m.text}
        if m.platform_message_id:
            content["platform_message_id"] = m.platform_message_id
        if m.script:
            content["script"] = m.script
        if wake.command:
            content["command"] = wake.command
        if m.revision:  # an edit or delete of an earlier row: the agent runner folds it in when it reads
            content[sessiondb.REVISION] = m.revision
            content[sessiondb.REVISES] = m.revises
        if m.attachments:
            content["attachments"] = [self._receive_file(folder, m.id, a) for a in m.attachments]
        sessiondb.insert_inbound(
            folder,
            sessiondb.InboundMessage(
                id=m.id,
                kind=m.kind,
                content=content,
                routing=routing,
                sender_id=m.sender.id if m.sender else None,
                sender_name=m.sender.name if m.sender else None,
                trigger=m.trigger,
                created_at=m.sent_at or time.time(),
            ),
            outbound_max_seq=sessiondb.outbound_max_seq(folder),
        )

    def _receive_file(self, folder: Path, message_id: str, attachment: ev.Attachment) -> dict[str, object]:
        """Copy a bridge's downloaded file into the session's inbox; anything else is only described."""
        described: dict[str, object] = {"name": attachment.name, "mime": attachment.mime, "size": attachment.size}
        bridges = (self.cfg.data_dir / "channels").resolve()
        if not attachment.url.startswith("file://"):
            return described | ({"error": attachment.error} if attachment.error else {})
        source = Path(attachment.url.removeprefix("file://")).resolve()
        # Only files a bridge on this host fetched: never a path a message could point anywhere.
        why = (
            "it is not a file a bridge on this host fetched"
            if not source.is_relative_to(bridges) or not source.is_file()
            else f"it is over the inbox's limit of {MAX_INBOX_BYTES // 2**20} MiB"
            if source.stat().st_size > MAX_INBOX_BYTES
            else ""
        )
        if why:
            log.warning("attachment %s of %s not taken (%s): %s", attachment.name, message_id, why, attachment.url)
            return described | {"error": why}
        box = re.sub(r"[^A-Za-z0-9._-]", "_", message_id)[-80:]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", attachment.name)[-100:] or "file"
        # The agent writes its inbox, and message ids are easy to guess: every folder on the way is opened by
        # descriptor and never through a link (a box it made a link is refused), and the file is written under a
        # fresh name and renamed into place, so a link it planted at the file's name is replaced, never written
        # through. Ownership goes through the same descriptors.
        try:
            with (
                source.open("rb") as copied,
                safefs.folder(folder) as session,
                safefs.subfolder(session, "inbox") as inbox,
                safefs.subfolder(inbox, box, make=True) as into,
            ):
                if self.owner_uid is not None:
                    os.fchown(into, self.owner_uid, self.owner_uid)
                safefs.write_copy(copied.fileno(), into, name, max_bytes=MAX_INBOX_BYTES, owner=self.owner_uid)
        except OSError as exc:
            log.warning("attachment %s of %s not saved in %s/inbox: %s", attachment.name, message_id, folder, exc)
            return described | {"error": "it could not be saved in the session's inbox"}
        return described | {"path": f"inbox/{box}/{name}"}

    async def _start(self, info: SessionInfo, folder: Path) -> None:
        route, trust, relay_dir = await self._vault_route(info)
        run = self.group_run(info.agent_group)
        group_dir, bad_folder = await asyncio.to_thread(group_folder, self.cfg.groups_dir, run.folder, info.agent_group)
        for why in (*run.refused, bad_folder):
            if why:  # the router's check should have caught it; the next source applies instead
                log.error(
                    "agent group %s: not using the router's setting: %s",
                    info.agent_group,
                    why,
                    extra={"session_id": info.id, "agent_group": info.agent_group},
                )
        claude_home = self.claude_home(info)
        cache_dir = self.cfg.state_dir.joinpath(info.agent_group, "cache")
        sent = self.index.group_settings(info.agent_group)
        starter = sent.starter_memory if sent is not None else ""
        digest = hashlib.sha256(starter.encode()).hexdigest()[:32]
        had: bool = await self.index.run(self.index.had_starter, info.agent_group, digest) if starter else False
        if had:
            starter = ""  # once only: a CLAUDE.md the owner deleted since stays deleted
        seeded = await asyncio.to_thread(
            self._prepare_group,
            group_dir,
            claude_home,
            cache_dir,
            self.cfg.state_dir.joinpath(info.agent_group, "claude"),
            folder,
            starter,
        )
        if seeded:
            await self.index.run(self.index.put_starter, info.agent_group, digest)
        live = self.live.setdefault(info.id, Live(info, folder))
        if live.bell is None:
            live.bell = await listen_bell(folder, functools.partial(self.kick, info.id), self.owner_uid)
        admin_dir = await self.admin.open(info)
        spec = ContainerSpec(
            install_id=self.cfg.install_id,
            agent_group=info.agent_group,
            session_id=info.id,
            image=run.image,
            session_dir=folder,
            group_dir=group_dir,
            global_dir=self.cfg.groups_dir / "global",
            claude_home=claude_home,
            cache_dir=cache_dir,
            gateway_dir=route.gateway_dir,
            gateway=route.gateway,
            relay_dir=relay_dir,
            network=route.network,
            memory=run.memory,
            cpus=run.cpus,
            pids=run.pids,
            user=self.user,
            userns_mode=self.userns_mode,
            model=run.model,
            tuning=Tuning(
                max_turns=run.max_turns,
                turn_budget=run.turn_budget,
                effort=run.effort,
                max_messages_per_prompt=run.max_messages_per_prompt,
                assistant_name=run.assistant_name or info.agent_group,
            ),
            skills=await asyncio.to_thread(self._skills, group_dir, run.skills),
            mcp=run.mcp,
            timezone=_host_timezone(),
            extra_mounts=await asyncio.to_thread(self._extra_mounts, info.agent_group),
            trust_dir=trust,
            admin_dir=admin_dir,
            runner=self.cfg.runner.id,
            epoch=held.epoch if (held := sessiondb.held(folder)) else 0,
        )
        try:
            container = await self.docker.start(spec)
        except BaseException:
            self._forget(info.id)
            raise
        live.container_id, live.epoch = str(container.id), spec.epoch
        self._spawn(self._find_death(live), f"find-death-{info.id}")  # a death before now went unseen
        # Silence is measured from here: not from a wait for a start slot, nor from the heartbeat a
        # dead predecessor left in the folder.
        live.last_activity = live.last_wake = time.monotonic()
        self.counters["started"] += 1
        log.info(
            "started container %s for session %s",
            container.short_id,
            info.id,
            extra={"session_id": info.id, "agent_group": info.agent_group},
        )

    def _skills(self, group_dir: Path, setting: tuple[str, ...] | None) -> tuple[tuple[str, Path], ...]:
        """The global and group skills the group's setting enables, each to be mounted read-only."""
        found = skills.available(self.cfg.groups_dir / "global", group_dir)
        return tuple((s.name, s.source) for s in skills.chosen(found, setting))

    def _extra_mounts(self, agent_group: str) -> tuple[ExtraMount, ...]:
        """The group's extra folders that pass the allowlist; a refused one is left out, loudly."""
        requests = self.cfg.groups.get(agent_group, GroupConfig()).mounts
        if not requests:
            return ()
        allowlist = Allowlist.load()
        allowed = []
        for m in requests:
            try:
                allowed.append(resolve(MountRequest(m.host, m.name, m.read_write), allowlist))
            except MountRefused as exc:
                log.error("agent group %s: mount %s refused: %s", agent_group, m.name, exc)
        return tuple(allowed)

    def _prepare_group(
        self, group_dir: Path, claude_home: Path, cache_dir: Path, shared_home: Path, folder: Path, memory: str
    ) -> bool:
        """The group's and the session's folders made ready for a container; True when the group folder has had
        the starter CLAUDE.md `memory` (written now, or one was there), so it is not written again."""
        (group_dir / PROJECT_SETTINGS).mkdir(parents=True, exist_ok=True)
        # Always there, so it is always mounted read-only: an agent cannot plant a skill for later.
        (group_dir / skills.SKILLS_DIR).mkdir(exist_ok=True)
        # The starter CLAUDE.md the group was made with, where this host's folder has none (it was made on
        # another host); a failure leaves the container without it this time, and the next start tries again.
        seeded = False
        try:
            if write_starter(group_dir, memory):
                log.info("agent group folder %s: its starter CLAUDE.md written", group_dir.name)
            seeded = bool(memory)  # written now, or a CLAUDE.md was there (kept as it is)
        except OSError as exc:
            log.error("agent group folder %s: its starter CLAUDE.md not written: %s", group_dir.name, exc)
        cache_dir.mkdir(parents=True, exist_ok=True)
        if not claude_home.exists():
            claude_home.mkdir(parents=True)
            adopt_conversation(shared_home, claude_home, folder)
        if self.owner_uid is not None:
            chown_tree(group_dir, self.owner_uid)
            chown_tree(claude_home, self.owner_uid)
            chown_tree(cache_dir, self.owner_uid)
        return seeded

    async def _vault_route(self, info: SessionInfo) -> tuple[VaultRoute, Path | None, Path | None]:
        """How this container reaches the vault, its trust folder, and the folder holding its token (tcp)."""
        if self.vault_transport == "socket":
            gateway, trust = await self._gateway_dir(info.agent_group)
            return socket_route(gateway), trust, None
        if problem := tcp_problem(self.cfg.runner):
            raise Retry(problem, delay=30.0)
        token, digest = new_token()  # a new one for every container made: the session's last one stops working
        request = vault_api.ContainerToken(agent_group=info.agent_group, session_id=info.id, sha256=digest)
        try:
            at = vault_api.container_token_at(self.cfg.runner.id)  # its own subject: the vault checks the placement
            answer = await control.ask_on(self.ctx.nc, vault_api.CONTAINER_TOKEN, request, timeout=5, subject=at)
        except control.Refused as exc:
            raise Retry(f"the vault refused: {exc}", delay=5.0) from exc
        except control.ControlError as exc:
            raise Retry(f"the vault did not answer: {exc}", delay=2.0) from exc
        relay_dir = self.cfg.path("run", "relay", info.id)
        await asyncio.to_thread(place_token, relay_dir, token, self.owner_uid)
        # the vault's trust folder on its own host; on another, the CA it answered, written here
        own = self.cfg.path("run", "trust")
        trust = await asyncio.to_thread(trust_folder, Path(answer.trust_dir), answer.ca_pem, own)
        return tcp_route(self.cfg.runner, answer.port, answer.tls_name), trust, relay_dir

    async def probing_vault(self) -> None:
        """Keep `vault_reached` current for the heartbeat, once per beat, off the beat's own path (a slow vault
        must not hold a beat back past dead_after)."""
        every = heartbeat.interval(self.cfg.runner.dead_after)
        while True:
            reached = await self.reaches_vault()
            if reached is not None and reached != self.vault_reached:
                log.log(
                    logging.INFO if reached else logging.WARNING,
                    "containers here %s the vault",
                    "reach" if reached else "do not reach",
                )
                self.vault_reached = reached
            if not await sleep_unless_stopping(self.ctx.stopping, every):
                return

    async def reaches_vault(self) -> bool | None:
        """Whether this host's containers can reach the vault, for the heartbeat: over TCP when the settings allow
        it; by socket when the vault's gateway socket (for `main`, the group every install has) takes a connection
        here, which it does only on the vault's own host. None when the vault does not answer (starting, or
        away): that says nothing of this host, and would be the same on every runner."""
        if self.vault_transport == "tcp":
            return tcp_problem(self.cfg.runner) is None
        try:
            answer = await control.ask_on(
                self.ctx.nc, vault_api.GATEWAY, vault_api.GroupRequest(agent_group="main"), timeout=5
            )
        except control.ControlError:
            return None
        return await asyncio.to_thread(unixsock.answers, Path(answer.socket))

    async def _gateway_dir(self, agent_group: str) -> tuple[Path, Path | None]:
        """Ask the vault for this group's gateway socket folder and its CA folder (mounted read-only);
        without a vault no agent may start."""
        try:
            answer = await control.ask_on(
                self.ctx.nc, vault_api.GATEWAY, vault_api.GroupRequest(agent_group=agent_group), timeout=5
            )
        except control.Refused as exc:
            raise Retry(f"the vault refused: {exc}", delay=5.0) from exc
        except control.ControlError as exc:
            raise Retry(f"the vault did not answer: {exc}", delay=2.0) from exc
        return Path(answer.socket).parent, Path(answer.trust_dir) if answer.trust_dir else None

    # --- what agents say ------------------------------------------------------------------------

    def kick(self, session_id: str) -> None:
        """A doorbell ring (or the safety poll): publish this session's new outbound rows."""
        live = self.live.get(session_id)
        if live is not None:
            live.last_activity = time.monotonic()
            live.ready.set()
        self._spawn(self.pump(session_id), f"pump-{session_id}")

    async def pump(self, session_id: str) -> None:
        # Rings can arrive faster than we publish: one pump at a time, one more if rung meanwhile.
        lock = self.pump_locks.setdefault(session_id, asyncio.Lock())
        if lock.locked():
            self.pump_dirty.add(session_id)
            return
        async with lock:
            while True:
                self.pump_dirty.discard(session_id)
                if session_id in self.moved:
                    self.unpublished.discard(session_id)  # the new owner publishes it
                    return
                try:
                    with self.fenced_off():
                        await self._pump_once(session_id)
                except Exception:
                    if session_id not in self.unpublished:  # said once: the poll tries every few seconds
                        log.exception(
                            "publishing outbound for %s failed; the poll retries until it goes out", session_id
                        )
                    self.unpublished.add(session_id)
                    return
                self.unpublished.discard(session_id)
                if session_id not in self.pump_dirty:
                    return

    async def _pump_once(self, session_id: str) -> None:
        info = self.index.get(session_id)
        if info is None:
            return
        folder = self.session_dir(info)
        rows = await asyncio.to_thread(sessiondb.outbound_to_publish, folder)
        allowed = await self.index.run(self.index.destinations, info.id) if rows else {}
        copies = copies_folder(self.cfg.sessions_dir, info)  # what file rows send: the runner's own copies
        for row in rows:
            # Checked before each row's publish (the bus is no transaction); were the session moved just after, the
            # new owner publishes the row again under the same message id, which JetStream drops as a duplicate.
            await asyncio.to_thread(sessiondb.check_fence, folder)
            for action in await self._actions(info, folder, row, allowed, copies):
                await self._apply(info, folder, action)
            await asyncio.to_thread(sessiondb.mark_published, folder, row.seq)
        await asyncio.to_thread(sessiondb.sync_acks, folder)

    async def _actions(
        self,
        info: SessionInfo,
        folder: Path,
        row: sessiondb.OutboundMessage | sessiondb.Unreadable,
        allowed: dict[tuple[str, str], ev.Route],
        copies: Path,
    ) -> list[Action]:
        """What one outbound row makes the runner do; nothing for a row refused or unreadable, said once in the log
        (the cursor moves past it: it is never read again)."""
        if isinstance(row, sessiondb.Unreadable):
            log.warning(
                "session %s: outbound #%d unreadable, not published: %s",
                info.id,
                row.seq,
                row.why,
                extra={"session_id": info.id},
            )
            return []
        try:
            return await asyncio.to_thread(translate, info, folder, row, allowed, self.cfg.runner.id, copies)
        except Refused as exc:
            log.warning("session %s: outbound #%d refused: %s", info.id, row.seq, exc, extra={"session_id": info.id})
            return []

    async def _apply(self, info: SessionInfo, folder: Path, action: Action) -> None:
        match action:
            case Publish(subject=subject, event=event, msg_id=msg_id):
                await publish(self.ctx.js, subject, event, msg_id=msg_id)
                self.counters["published"] += 1
            case Respond(request_id=request_id, content=content):
                await self._respond(folder, request_id, content)
            case Ask(request=request, options=options):
                await self.index.run(self.index.put_question, request.id, info.id, options)
                await publish(self.ctx.js, subjects.APPROVAL_REQUEST, request, msg_id=f"approval:{request.id}")
            case ListTasks(request_id=request_id, op=op):
                try:
                    tasks = await control.ask_on(self.ctx.nc, scheduler_api.AGENT_LIST, op, timeout=5)
                    content = msgspec.to_builtins(tasks)
                except control.ControlError as exc:
                    content = {"error": f"the scheduler did not answer ({type(exc).__name__}); is it running?"}
                await self._respond(folder, request_id, content)

    async def _respond(self, folder: Path, request_id: str, content: dict[str, Any]) -> None:
        await asyncio.to_thread(sessiondb.respond, folder, request_id, content)
        await asyncio.to_thread(ring, folder)

    async def on_decision(self, decision: ev.ApprovalDecision, msg: Msg | None = None) -> None:
        """The answer to an agent's question: back into its session, where the tool waits."""
        question = await self.index.run(self.index.take_question, decision.id)
        if question is None:
            if not await self.admin.on_decision(decision):  # an agent's `clawden` write, or another's
                await self.maker.on_decision(decision)  # a `create_agent` request, or another requester's
            return
        session_id, options = question
        info = self.index.get(session_id)
        if info is None:
            return
        answer = decision.value
        if answer.isdigit() and 1 <= int(answer) <= len(options):
            answer = options[int(answer) - 1]
        with self.fenced_off():  # moved: the answer is the new owner's to give (the question is lost here)
            await self._respond(
                self.session_dir(info),
                decision.id,
                {"decision": decision.decision, "answer": answer, "by": decision.decided_by},
            )

    async def note(self, info: SessionInfo, key: str, text: str) -> None:
        """A word from the host to the agent (what became of its `clawden` write): a row in its session that wakes
        it as a chat message would, from `clawden`, never from a person."""
        folder = self.session_dir(info)
        route = info.route
        message = sessiondb.InboundMessage(
            id=key,
            kind="chat",
            content={"text": text},
            routing=sessiondb.Routing(route.channel, route.chat_id, route.thread_id),
            sender_id="clawden",
            sender_name="clawden (host)",
        )
        async with self.session_locks.setdefault(info.id, asyncio.Lock()):
            with self.fenced_off():
                await asyncio.to_thread(self._store_note, folder, message)
                if info.id in self.live:
                    await asyncio.to_thread(ring, folder)
                else:
                    self.want(info, folder)

    def _store_note(self, folder: Path, message: sessiondb.InboundMessage) -> None:
        prepare_folder(folder, self.owner_uid)
        sessiondb.insert_inbound(folder, message, outbound_max_seq=sessiondb.outbound_max_seq(folder))

    async def _tell(
        self, info: SessionInfo, key: str, text: str, kind: Literal["notice", "error"] = "notice", answering: str = ""
    ) -> None:
        await self._still_ours(info)
        event = ev.OutboundMessage(
            id=f"{info.id}:{key}",
            route=info.route,
            text=text,
            session_id=info.id,
            agent_group=info.agent_group,
            kind=kind,
            answering=answering,
        )
        await publish(self.ctx.js, subjects.outbound(info.route.channel, info.route.chat_id), event, msg_id=event.id)

    async def _fail(self, info: SessionInfo, failed: list[sessiondb.InboundMessage], why: str) -> None:
        for message in failed:
            text, answering = f"Sorry — I couldn't answer that: {why}", message.content.get("platform_message_id")
            await self._tell(info, f"failed-{message.seq}", text, "error", str(answering or ""))

    # --- receipts -------------------------------------------------------------------------------

    async def on_receipt(self, receipt: ev.DeliveryReceipt, msg: Msg) -> None:
        info = self.index.get(receipt.session_id)
        if info is None or not receipt.seq or info.id in self.moved:
            return  # not one of ours (another runner's session, one moved away, or a runner notice)
        if not receipt.ok and not receipt.final:
            return  # the bridge is still retrying; its final word follows
        # The session keeps the strongest word per message (failed > read > delivered), so receipts may come
        # in any order and a redelivered one changes nothing.
        with self.fenced_off():
            await asyncio.to_thread(
                sessiondb.record_delivery,
                self.session_dir(info),
                receipt.seq,
                platform_message_id=receipt.platform_message_id,
                error=None if receipt.ok else receipt.error or "the platform refused it",
                read=receipt.ok and receipt.state == "read",
            )

    # --- starting containers: one per session, a global cap, a fair queue, backoff ----------------

    def want(self, info: SessionInfo, folder: Path) -> None:
        """Make sure this session gets a container: now if a slot is free, else in arrival order.

        Synchronous on purpose: concurrent wakes of one session cannot both get past the checks.
        """
        if info.id in self.live or info.id in self.queue or info.id in self.moved:
            return
        self.queue[info.id] = Waiting(info, folder)
        self.changed.set()

    async def dispatcher(self) -> None:
        """Starts queued sessions as slots free up; tells chats that wait too long why."""
        while not self.ctx.stopping.is_set():
            self.changed.clear()
            plan = core.dispatch(
                self._queued(),
                len(self.live),
                self.cfg.runner.max_containers,
                time.monotonic(),
                self.cfg.runner.queue_notice_after,
                self.making_room,
            )
            for session_id in plan.start:
                waiting = self.queue.pop(session_id)
                self.live[session_id] = Live(waiting.info, waiting.folder)  # holds the slot
                self._spawn(self._launch(waiting), f"launch-{session_id}")
            for session_id in plan.tell:
                waiting = self.queue[session_id]
                waiting.told = True
                self._spawn(self._tell_waiting(waiting), f"queued-{session_id}")
            if plan.make_room:
                self.making_room = True
                self._spawn(self._make_room(), "make-room")
            await sleep_unless_stopping(self.ctx.stopping, 1.0, self.changed)

    async def _tell_waiting(self, waiting: Waiting) -> None:
        """Tell a chat kept waiting for a slot, once for the messages it waits with: the notice is keyed by the newest
        of them, so a session that waits again for the same ones (its start failed, a drain, a runner restart) says
        nothing twice (the bus and every bridge drop a second event of one id)."""
        seq = await asyncio.to_thread(sessiondb.newest_unanswered, waiting.folder)
        if not seq:
            return  # answered meanwhile, or woken with nothing to answer (a task's run says nothing until it ends)
        self.counters["queue_notices"] += 1
        await self._tell(
            waiting.info,
            f"queued-{seq}",
            "I'm busy with other conversations right now; I'll get to your message as soon as a slot frees up.",
        )

    def _queued(self) -> Iterator[core.Queued]:
        return (core.Queued(sid, w.since, w.not_before, w.told) for sid, w in self.queue.items())

    async def _make_room(self) -> None:
        """Under the cap, an idle container gives its slot to a waiting chat; where none is idle, and a chat has waited
        past `queue_notice_after`, the one that has held its slot longest finishes what it was given and leaves."""
        try:
            for live in sorted(self.live.values(), key=lambda lv: lv.last_activity):
                if (
                    live.container_id
                    and not live.stopping
                    and not await asyncio.to_thread(sessiondb.has_unanswered, live.folder)
                ):
                    await self.stop_session(live.info.id, "making room for a waiting chat")
                    return
            await self._drain_one()
        finally:
            self.making_room = False

    async def _drain_one(self) -> None:
        # Only an agent that is up: before it rang, its SIGUSR1 handler may not be there yet, and the signal kills it.
        holding = (
            core.Holding(sid, lv.since, lv.stopping or lv.draining)
            for sid, lv in self.live.items()
            if lv.container_id and lv.ready.is_set()
        )
        session_id = core.to_drain(holding, self._queued(), time.monotonic(), self.cfg.runner.queue_notice_after)
        live = self.live.get(session_id or "")
        if live is None:
            return
        live.draining = True  # its exit is no crash; what it leaves unanswered queues again (`_handle_death`)
        log.info(
            "asking the container of %s to finish its turn and give its slot to a chat that waits",
            live.info.id,
            extra={"session_id": live.info.id},
        )
        await self.docker.drain(live.container_id)

    async def _launch(self, waiting: Waiting) -> None:
        info, folder = waiting.info, waiting.folder
        try:
            # A few at a time, each until its agent rings (Claude Code is up): a wave of starts on a
            # small machine then answers its first chats in seconds instead of all at the end, and the
            # group's later containers find the CA self-test already passed by its first.
            async with self.starting:
                await self._still_ours(info)  # queued, then moved: no container for it here
                await self._start(info, folder)
                live = self.live.get(info.id)
                if live is not None:
                    with contextlib.suppress(TimeoutError):  # bounded: a slow agent only slows the wave
                        await asyncio.wait_for(live.ready.wait(), START_GATE_SECONDS)
        except sessiondb.Fenced:
            self._forget(info.id)
            raise  # `_spawn` drops the session
        except Retry as exc:
            # The vault away (restarting, say): no fault of the container's, so no failed start is counted, and the
            # session waits its turn again, however long that takes; its messages stay pending.
            self._forget(info.id)
            log.warning("no container for %s yet: %s", info.id, exc, extra={"session_id": info.id})
            self.queue[info.id] = replace(waiting, not_before=time.monotonic() + exc.delay)
            self.changed.set()
            return
        except Exception as exc:
            self._forget(info.id)
            failures = self.failures.get(info.id, 0) + 1
            self.failures[info.id] = failures
            then = core.start_failed(failures, START_ATTEMPTS, isinstance(exc, ImageMissing), time.monotonic())
            log.log(
                logging.ERROR if then.give_up else logging.WARNING,
                "could not start a container for %s (%d): %s",
                info.id,
                failures,
                exc,
                extra={"session_id": info.id},
            )
            if then.give_up:
                self.failures.pop(info.id, None)
                failed = await asyncio.to_thread(sessiondb.fail_pending, folder)
                reason = (
                    str(exc)
                    if isinstance(exc, ImageMissing)
                    else ("my container could not be started; the operator has to look at the runner's log.")
                )
                await self._fail(info, failed, reason)
            else:
                self.queue[info.id] = Waiting(info, folder, not_before=then.retry_at or 0.0)
            self.changed.set()
            return
        await asyncio.to_thread(ring, folder)

    # --- container deaths, hangs and idle stops ---------------------------------------------------

    def on_death(self, died: Died) -> None:
        """A container of this install died (Docker's event, or found dead by `_find_death` or a stop). Only the
        session's current container counts; one that died before its start returned its id is found once it has it."""
        live = self.live.get(died.session_id)
        if live is None or live.container_id != died.container_id:
            return
        live.ready.set()  # a start that died frees its place in the wave
        self._spawn(self._handle_death(live, died), f"death-{died.session_id}")

    async def _handle_death(self, live: Live, died: Died) -> None:
        info = live.info
        async with self.session_locks.setdefault(info.id, asyncio.Lock()):
            if self.live.get(info.id) is not live:
                return
            await self.pump(info.id)  # whatever the agent said before it died still goes out
            self._forget(info.id)
            # Moved (its container found the fence and stopped): no retry and no notice here.
            on_purpose = (live.stopping or live.draining) and not live.hung
            if on_purpose or info.id in self.moved or not await self._ours_still(info):
                await self.docker.stop_and_remove(died.container_id, timeout=1)
                if on_purpose and info.id not in self.moved:
                    await self._queue_if_owed(info, live.folder)
                return
            self.counters["crashed"] += 1
            tail = await self.docker.logs_tail(died.container_id)
            log.error(
                "container for session %s %s (exit %d); last output:\n%s",
                info.id,
                "hung" if live.hung else "died",
                died.exit_code,
                tail,
                extra={"session_id": info.id},
            )
            await self.docker.stop_and_remove(died.container_id, timeout=1)
            retry, failed = await asyncio.to_thread(sessiondb.settle_unfinished, live.folder, self.cfg.runner.max_tries)
            what = "got stuck" if live.hung else f"stopped unexpectedly (exit code {died.exit_code})"
            await self._fail(
                info,
                failed,
                f"my container {what} every time I tried. Please send it again "
                "later, or ask the operator to look at the runner's log.",
            )
            if retry:
                # Crash-looping sessions back off: 2 s, 4 s, 8 s … between attempts.
                crashes = self.failures.get(info.id, 0) + 1
                self.failures[info.id] = crashes
                self.queue[info.id] = Waiting(
                    info, live.folder, not_before=time.monotonic() + backoff(crashes, cap=core.MAX_BACKOFF)
                )
                self.changed.set()

    async def _queue_if_owed(self, info: SessionInfo, folder: Path) -> None:
        """A container stopped on purpose (drained for a waiting chat, made room, restarted) with messages still to
        answer: the session queues for a slot again, behind those already waiting."""
        with contextlib.suppress(sqlite3.Error, OSError):
            if await asyncio.to_thread(sessiondb.has_unanswered, folder):
                self.want(info, folder)

    def _forget(self, session_id: str) -> None:
        live = self.live.pop(session_id, None)
        if live is not None and live.bell is not None:
            live.bell.close()
        self.admin.close(session_id)
        self.changed.set()

    async def stop_session(self, session_id: str, reason: str, *, hung: bool = False) -> None:
        live = self.live.get(session_id)
        if live is None or not live.container_id or live.stopping:
            return
        live.stopping, live.hung = True, hung
        log.info("stopping container of %s (%s)", session_id, reason, extra={"session_id": session_id})
        stopped = await self.docker.stop_and_remove(live.container_id, timeout=1 if hung else STOP_GRACE)
        if stopped is not None:  # it had died already, unseen: no event comes for it now, so its death is handled here
            self.on_death(Died(session_id, live.container_id, stopped))

    def on_events_followed(self) -> None:
        """Docker's event stream is followed again (or for the first time): a death while it was down may never be
        told (a restarted daemon forgets its events), so each container of a live session is asked after once."""
        for live in list(self.live.values()):
            if live.container_id:
                self._spawn(self._find_death(live), f"find-death-{live.info.id}")

    async def _find_death(self, live: Live) -> None:
        """Ask once whether the session's container still runs, where its death may have gone unseen (before its start
        returned the id, after the adoption's list, while the event stream was down); a dead one is handled as its
        event would have been. Asked once it is in `live` with its id: any death after comes as an event."""
        stopped = await self.docker.ended(live.container_id)
        if stopped is not None:
            self.on_death(Died(live.info.id, live.container_id, stopped))

    async def restart_session(self, session_id: str) -> bool:
        """Stop the session's running container now (what it said still goes out), so its next message starts
        one from the group's current settings; its conversation is kept in the session folder."""
        live = self.live.get(session_id)
        if live is None or not live.container_id or live.stopping:
            return False
        await self.stop_session(session_id, "restarting on the group's current settings")
        await self.pump(session_id)
        if self.live.get(session_id) is live:  # gone now: the death that follows finds nothing to do
            self._forget(session_id)
        if await asyncio.to_thread(sessiondb.has_unanswered, live.folder):
            self.want(live.info, live.folder)  # a turn cut short runs again in the new container, now
        return True

    async def ctl_restart(self, request: runner_api.Restart) -> runner_api.Restarted:
        """`clawden groups restart`: every running container of the group."""
        sessions = [sid for sid, live in self.live.items() if live.info.agent_group == request.agent_group]
        stopped = [await self.restart_session(sid) for sid in sessions]
        return runner_api.Restarted(stopped=sum(stopped))

    async def _check(self, live: Live) -> None:
        """Idle stop, or hang detection from the agent's heartbeat, for one running container."""
        await asyncio.to_thread(sessiondb.check_fence, live.folder)  # moved: no verdict, the session is dropped
        busy = await asyncio.to_thread(sessiondb.has_unanswered, live.folder)
        heartbeat_age, tool_timeout = (0.0, None) if not busy else await asyncio.to_thread(_silence, live.folder)
        now = time.monotonic()
        # The group's latest idle timeout, also for a container started before it changed.
        state = core.health(
            busy=busy,
            idle_for=now - live.last_activity,
            idle_timeout=self.group_run(live.info.agent_group).idle_timeout,
            heartbeat_age=heartbeat_age,
            since_wake=now - live.last_wake,
            allowed=core.allowed_silence(self.cfg.runner.hang_timeout, tool_timeout),
        )
        if not busy:
            self.failures.pop(live.info.id, None)  # it answered: a later crash starts a fresh count
            if state == "idle":
                self.counters["idle_stopped"] += 1
                await self.stop_session(live.info.id, "idle")
            return
        live.last_activity = now  # a long turn is not idleness
        if state == "hung":
            silent = min(heartbeat_age, now - live.last_wake)
            self.counters["hung"] += 1
            await self._tell(
                live.info,
                f"hung-{live.container_id[:12]}",
                f"I got stuck (no sign of life for {silent:.0f} s), so I'm restarting and will try your message again.",
            )
            await self.stop_session(live.info.id, f"no heartbeat for {silent:.0f}s", hung=True)

    async def housekeeping(self) -> None:
        """Safety-net poll for lost rings; idle stops; hang detection. Rings do the real work."""
        poll = self.cfg.runner.safety_poll
        while await sleep_unless_stopping(self.ctx.stopping, poll):
            owed = set(self.unpublished)  # a publish NATS did not take, also of a session whose container is gone
            for session_id, live in list(self.live.items()):
                if not live.container_id or live.stopping:
                    continue
                owed.add(session_id)
                self._spawn(self._check(live), f"check-{session_id}")
            for session_id in owed:
                self._spawn(self.pump(session_id), f"pump-{session_id}")  # not activity: no kick()

    # --- control --------------------------------------------------------------------------------

    async def ctl_containers(self, _request: Nothing) -> runner_api.Containers:
        """For `clawden status`: the sessions with a container, and those waiting for a slot."""
        now = time.monotonic()
        lives = list(self.live.values())
        failed = await asyncio.to_thread(lambda: {live.info.id: mcp_failed(live.folder) for live in lives})
        cpus, load, memory = heartbeat.host()
        return runner_api.Containers(
            runner=self.cfg.runner.id,
            max=self.cfg.runner.max_containers,
            cpus=cpus,
            load=round(load, 2),
            memory_available=memory,
            running=[
                runner_api.Running(
                    session_id=live.info.id,
                    agent_group=live.info.agent_group,
                    container=live.container_id[:12],
                    state=live.state,
                    idle=round(now - live.last_activity, 1),
                    mcp_failed=failed.get(live.info.id, {}),
                )
                for live in lives
            ],
            waiting=[
                runner_api.Waiting(
                    session_id=w.info.id, agent_group=w.info.agent_group, waiting=round(now - w.since, 1)
                )
                for w in list(self.queue.values())
            ],
        )

    # --- restart ----------------------------------------------------------------------------------

    async def adopt(self) -> None:
        """After a restart: keep our running containers, clear dead ones, finish unanswered turns. Sessions moved
        to another runner meanwhile (their fence names a later placement) are dropped: their containers stop."""
        for known in self.index.all():  # each folder is written at the epoch runner.db kept for it
            sessiondb.hold(self.session_dir(known), self.index.epoch(known.id))
        for container in await self.docker.ours():
            session_id = container.labels.get(LABEL_SESSION, "")
            info = self.index.get(session_id)
            if info is not None and not await self._ours_still(info):
                await self.docker.stop_and_remove(str(container.id), timeout=1)
            elif container.status == "running" and info is not None and session_id not in self.live:
                folder = self.session_dir(info)
                live = Live(info, folder, container_id=str(container.id))
                try:
                    live.bell = await listen_bell(folder, functools.partial(self.kick, info.id), self.owner_uid)
                except OSError as exc:  # the agent's own folder: it must not stop the adoption of the others
                    log.warning("cannot listen in %s (%s): its container is stopped", folder, exc)
                    await self.docker.stop_and_remove(str(container.id), timeout=1)
                    continue
                await self.admin.open(info)
                self.live[info.id] = live
                self._spawn(self._find_death(live), f"find-death-{info.id}")  # it may have died since the list
                self.kick(info.id)
                log.info("adopted running container %s for %s", container.short_id, info.id)
            else:
                await self.docker.stop_and_remove(str(container.id), timeout=1)
        for info in self.index.all():
            if info.id in self.live:
                continue
            folder = self.session_dir(info)
            if not (folder / sessiondb.INBOUND).exists() or not await self._ours_still(info):
                continue
            self._spawn(self.pump(info.id), f"pump-{info.id}")
            if await asyncio.to_thread(sessiondb.has_unanswered, folder):
                log.info("session %s has unanswered messages; restarting its agent", info.id)
                self.want(info, folder)

    async def _ours_still(self, info: SessionInfo) -> bool:
        """False (the session dropped) if it was moved to another runner."""
        try:
            await self._still_ours(info)
        except sessiondb.Fenced as moved:
            self.drop(info.id, moved.fence)
            return False
        return True

    async def shutdown(self) -> None:
        # By default containers keep running across a runner restart; the next runner adopts them.
        if self.cfg.runner.stop_containers_on_exit:
            await asyncio.gather(
                *(self.stop_session(s, "runner exit") for s in list(self.live)), return_exceptions=True
            )
        for live in list(self.live.values()):
            if live.bell is not None:
                live.bell.close()
        self.admin.close_all()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _logged(coro: Coroutine[Any, Any, object], name: str) -> None:
    """Background work must not die silently: one session's failure is logged, the rest go on."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s failed", name)


def open_ask(
    info: SessionInfo,
    folder: Path,
    row: sessiondb.OutboundMessage,
    allowed: dict[tuple[str, str], ev.Route],
    now: float,
) -> Ask | None:
    """The card a question row stands for, as the runner that published it recorded it (its id and its options as
    shown), while the question is open: None once the row's timeout has passed since the agent wrote it, and for a
    row no runner acts on (refused, or for another agent group, which is answered at once)."""
    try:
        actions = translate(info, folder, row, allowed)
    except ValueError:  # Refused, or a request id no subject may carry
        return None
    question = sessionrows.outbound(row.kind, row.content)  # translate read it: it is one
    if not isinstance(question, sessionrows.Question) or row.created_at + question.timeout <= now:
        return None
    return next((a for a in actions if isinstance(a, Ask)), None)


def _check_fence(folder: Path) -> None:
    check_files(folder)  # never read through a link the agent planted
    sessiondb.check_fence(folder)


def _silence(folder: Path) -> tuple[float, float | None]:
    """(seconds since the agent's last heartbeat, the timeout of the long tool call it declared, if any)."""
    try:
        silent = time.time() - (folder / sessiondb.HEARTBEAT).stat().st_mtime
    except FileNotFoundError:
        silent = 0.0  # not started yet; the container start itself is bounded elsewhere
    tool = sessiondb.get_state(folder, sessiondb.CURRENT_TOOL_KEY)
    return silent, float(json.loads(tool).get("timeout", 0)) if tool else None


def _host_timezone() -> str:
    try:
        return Path("/etc/timezone").read_text().strip()
    except OSError:
        return ""


async def main(ctx: ServiceContext) -> None:
    docker = Docker(ctx.config.install_id, ctx.config.runner.docker_workers)
    index = await SessionIndex.start(ctx.config.data_dir / "runner.db")
    # Every session-folder write checks the placement fence; a fence naming this runner is its own later claim.
    sessiondb.write_as(ctx.config.runner.id, follows_own=True)
    runner = Runner(ctx, docker, index)
    ctx.stats["runner"] = runner.counters
    ctx.stats["cli"] = runner.admin.counters
    await ctx.endpoint(runner_api.CONTAINERS, runner.ctl_containers)
    await ctx.endpoint(runner_api.RESTART, runner.ctl_restart)
    # The same at clawden.ctl.runner.<id>.<verb>, where a caller that wants every runner asks each.
    await heartbeat.serve_own(ctx, runner_api.CONTAINERS, runner.ctl_containers)
    await heartbeat.serve_own(ctx, runner_api.RESTART, runner.ctl_restart)
    try:
        await docker.ping()
        engine = await docker.engine()
        runner.engine_cpus = engine.cpus
        runner.userns_mode = engine.userns_mode
        runner.vault_transport = vault_transport(ctx.config.runner.vault_transport, engine.operating_system)
        log.info("containers reach the vault by %s", runner.vault_transport)
        if engine.rootless:
            runner.user = container_user(rootless=True)[0]
            log.info("rootless Docker: containers run as its user (their root, with no capabilities)")
        if engine.remapped:
            log.info(
                "the Docker engine remaps containers' users (userns-remap): agent containers run in the host's user"
                " namespace (--userns=host), as %s with no capabilities, as on a plain engine",
                runner.user,
            )
        if not engine.limits:
            log.warning(
                "the Docker engine drops containers' memory and pids limits (rootless Docker without cgroup v2"
                " delegation): an agent may use all of this machine's memory"
            )
        if runner.vault_transport == "tcp" and (problem := tcp_problem(ctx.config.runner)):
            log.error("no agent container can start: %s", problem)  # each start says so again
        docker.watch_deaths(runner.on_death, runner.on_events_followed)
        await runner.adopt()
        wakes = await bind(ctx.js, runner_wake(ctx.config.runner.id))
        receipts = await bind(ctx.js, runner_receipts(ctx.config.runner.id))
        decisions = await bind(ctx.js, runner_decisions(ctx.config.runner.id))
        await ctx.ready(f"runner {ctx.config.runner.id}: {len(runner.live)} containers adopted")
        wake_stats, receipt_stats = ConsumeStats(), ConsumeStats()
        ctx.stats["wakes"], ctx.stats["receipts"] = wake_stats, receipt_stats
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                consume(wakes, ev.WAKE_DECODER, runner.on_wake, stopping=ctx.stopping, stats=wake_stats, concurrency=8)
            )
            tg.create_task(
                consume(receipts, ev.DeliveryReceipt, runner.on_receipt, stopping=ctx.stopping, stats=receipt_stats)
            )
            tg.create_task(consume(decisions, ev.ApprovalDecision, runner.on_decision, stopping=ctx.stopping))
            tg.create_task(runner.housekeeping())
            tg.create_task(runner.dispatcher())
            tg.create_task(runner.admin.resume())  # writes an admin decided that a stopped runner had not finished
            tg.create_task(runner.probing_vault())
            tg.create_task(
                heartbeat.run(ctx, lambda: (len(runner.live), len(runner.queue)), lambda: runner.vault_reached)
            )
    finally:
        await runner.shutdown()
        docker.close()
        await index.stop()
