"""The runner process: wakes sessions, runs their containers, relays what the agents say.

Flow per session: a wake is written into `inbound.db`, the container is started if none runs,
and its doorbell rung; when the agent rings back, new `outbound.db` rows are published on the
bus in order and the cursor advanced. A slow poll over live sessions is only the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from clawden import sessiondb
from clawden.bus import ConsumeStats, Retry, bind, consume, publish, subjects
from clawden.bus import events as ev
from clawden.bus.streams import runner_receipts, runner_wake
from clawden.runtime import ServiceContext
from services.runner.containers import ContainerSpec, Died, Docker, ImageMissing, container_user
from services.runner.sessions import (
    SessionIndex,
    SessionInfo,
    UnsafeSessionFolder,
    chown_tree,
    listen_bell,
    prepare_folder,
    ring,
)

log = logging.getLogger("clawden.runner")
START_ATTEMPTS = 5  # deliveries of one wake before its messages fail with a word to the user


@dataclass
class Live:
    """A session whose container runs (or is starting)."""

    info: SessionInfo
    folder: Path
    container_id: str = ""
    bell: asyncio.DatagramTransport | None = None
    last_activity: float = field(default_factory=time.monotonic)
    stopping: bool = False


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
        self.user, self.owner_uid = container_user()
        self.tasks: set[asyncio.Task[None]] = set()
        self.counters = {"wakes": 0, "started": 0, "published": 0, "crashed": 0, "idle_stopped": 0}

    # --- paths ----------------------------------------------------------------------------------

    def session_dir(self, info: SessionInfo) -> Path:
        return self.cfg.sessions_dir / info.agent_group / info.id

    def claude_home(self, agent_group: str) -> Path:
        # The group's Claude Code state (conversations) outlives containers; kept out of the
        # group folder so the agent's memory stays readable.
        return self.cfg.path("state", agent_group, "claude")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- wakes ----------------------------------------------------------------------------------

    async def on_wake(self, wake: ev.Wake, msg: Msg) -> None:
        self.counters["wakes"] += 1
        info = SessionInfo(wake.session_id, wake.agent_group, wake.route)
        lock = self.session_locks.setdefault(info.id, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self.index.put, info)
            folder = self.session_dir(info)
            try:
                await asyncio.to_thread(self._store_wake, folder, wake)
            except (UnsafeSessionFolder, sessiondb.SchemaError) as exc:
                log.error("session %s folder refused: %s", info.id, exc, extra={"session_id": info.id})
                await self._tell(info, f"wake-refused-{wake.key}",
                                 "Sorry — this conversation's storage is damaged, so I can't answer. "
                                 "The operator has to look at the runner's log.")
                return
            live = self.live.get(info.id)
            if live is None or not live.container_id:
                await msg.in_progress()
                try:
                    await self._start(info, folder)
                except ImageMissing as exc:
                    log.error("%s", exc)
                    await self._fail_pending(info, folder, str(exc))
                    return
                except Exception as exc:
                    if msg.metadata.num_delivered < START_ATTEMPTS:
                        log.warning("could not start a container for %s: %s", info.id, exc)
                        if isinstance(exc, Retry):
                            raise
                        raise Retry(f"container start failed: {exc}", delay=2.0) from exc
                    log.exception("giving up starting a container for %s", info.id)
                    await self._fail_pending(info, folder, "my container could not be started "
                                             f"({type(exc).__name__}); the operator has to look at the runner's log.")
                    return
            else:
                live.last_activity = time.monotonic()
            await asyncio.to_thread(ring, folder)

    def _store_wake(self, folder: Path, wake: ev.Wake) -> None:
        prepare_folder(folder, self.owner_uid)
        routing = sessiondb.Routing(wake.route.channel, wake.route.chat_id, wake.route.thread_id)
        sessiondb.set_routing(folder, routing)
        m = wake.message
        content: dict[str, object] = {"text": m.text}
        if wake.command:
            content["command"] = wake.command
        if m.attachments:
            content["attachments"] = [{"name": a.name, "mime": a.mime, "size": a.size} for a in m.attachments]
        sessiondb.insert_inbound(folder, sessiondb.InboundMessage(
            id=m.id, kind=m.kind, content=content, routing=routing,
            sender_id=m.sender.id if m.sender else None, sender_name=m.sender.name if m.sender else None,
            trigger=m.trigger, created_at=m.sent_at or time.time(),
        ), outbound_max_seq=sessiondb.outbound_max_seq(folder))

    async def _start(self, info: SessionInfo, folder: Path) -> None:
        gateway = await self._gateway_dir(info.agent_group)
        group_dir = self.cfg.groups_dir / info.agent_group
        claude_home = self.claude_home(info.agent_group)
        await asyncio.to_thread(self._prepare_group, group_dir, claude_home)
        live = self.live.setdefault(info.id, Live(info, folder))
        if live.bell is None:
            live.bell = await listen_bell(folder, functools.partial(self.kick, info.id), self.owner_uid)
        spec = ContainerSpec(
            install_id=self.cfg.install_id, agent_group=info.agent_group, session_id=info.id,
            image=self.cfg.runner.image, session_dir=folder, group_dir=group_dir,
            global_dir=self.cfg.groups_dir / "global", claude_home=claude_home, gateway_dir=gateway,
            memory=self.cfg.runner.memory, cpus=self.cfg.runner.cpus, pids=self.cfg.runner.pids,
            user=self.user, model=self.cfg.model.model, timezone=_host_timezone(),
        )
        try:
            container = await self.docker.start(spec)
        except BaseException:
            self._forget(info.id)
            raise
        live.container_id = str(container.id)
        live.last_activity = time.monotonic()
        self.counters["started"] += 1
        log.info("started container %s for session %s", container.short_id, info.id,
                 extra={"session_id": info.id, "agent_group": info.agent_group})

    def _prepare_group(self, group_dir: Path, claude_home: Path) -> None:
        group_dir.mkdir(parents=True, exist_ok=True)
        claude_home.mkdir(parents=True, exist_ok=True)
        if self.owner_uid is not None:
            chown_tree(group_dir, self.owner_uid)
            chown_tree(claude_home, self.owner_uid)

    async def _gateway_dir(self, agent_group: str) -> Path:
        """Ask the vault for this group's gateway socket; without a vault no agent may start."""
        try:
            reply = await self.ctx.nc.request(subjects.ctl("vault", "gateway"),
                                              json.dumps({"agent_group": agent_group}).encode(), timeout=5)
        except Exception as exc:
            raise Retry(f"the vault did not answer: {exc}", delay=2.0) from exc
        if reply.headers and reply.headers.get("Nats-Service-Error"):
            raise Retry(f"the vault refused: {reply.headers.get('Nats-Service-Error')}", delay=5.0)
        return Path(json.loads(reply.data)["socket"]).parent

    # --- what agents say ------------------------------------------------------------------------

    def kick(self, session_id: str) -> None:
        """A doorbell ring (or the safety poll): publish this session's new outbound rows."""
        live = self.live.get(session_id)
        if live is not None:
            live.last_activity = time.monotonic()
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
                try:
                    await self._pump_once(session_id)
                except Exception:
                    log.exception("publishing outbound for %s failed; the next ring or poll retries",
                                  session_id)
                    return
                if session_id not in self.pump_dirty:
                    return

    async def _pump_once(self, session_id: str) -> None:
        info = self.index.get(session_id)
        if info is None:
            return
        folder = self.session_dir(info)
        rows = await asyncio.to_thread(sessiondb.read_new_outbound, folder)
        for row in rows:
            event = self._outbound_event(info, row)
            if event is not None:
                await publish(self.ctx.js, subjects.outbound(event.route.channel), event, msg_id=event.id)
                self.counters["published"] += 1
            await asyncio.to_thread(sessiondb.mark_published, folder, row.seq)
        await asyncio.to_thread(sessiondb.sync_acks, folder)

    def _outbound_event(self, info: SessionInfo, row: sessiondb.OutboundMessage) -> ev.OutboundMessage | None:
        route = info.route  # the runner's own record: a row cannot redirect itself to another chat
        if (row.routing.channel, row.routing.chat_id) not in (("", ""), (route.channel, route.chat_id)):
            log.warning("session %s tried to send #%d to %s:%s; refused", info.id, row.seq,
                        row.routing.channel, row.routing.chat_id)
            return None
        if row.kind != "chat":
            log.info("outbound kind %s from %s is not supported yet; skipped", row.kind, info.id)
            return None
        text = str(row.content.get("text", ""))[: ev.MAX_TEXT]
        if not text:
            return None
        return ev.OutboundMessage(id=f"{info.id}:{row.id}", route=route, text=text, session_id=info.id,
                                  agent_group=info.agent_group, seq=row.seq)

    async def _tell(self, info: SessionInfo, key: str, text: str) -> None:
        event = ev.OutboundMessage(id=f"{info.id}:{key}", route=info.route, text=text, session_id=info.id,
                                   agent_group=info.agent_group)
        await publish(self.ctx.js, subjects.outbound(info.route.channel), event, msg_id=event.id)

    async def _fail_pending(self, info: SessionInfo, folder: Path, reason: str) -> None:
        failed = await asyncio.to_thread(sessiondb.fail_unfinished, folder, reason)
        for message in failed:
            await self._tell(info, f"failed-{message.seq}", f"Sorry — I couldn't answer that: {reason}")

    # --- receipts -------------------------------------------------------------------------------

    async def on_receipt(self, receipt: ev.DeliveryReceipt, msg: Msg) -> None:
        info = self.index.get(receipt.session_id)
        if info is None or not receipt.seq:
            return  # not one of ours (another runner's session, or a runner notice)
        await asyncio.to_thread(sessiondb.record_delivery, self.session_dir(info), receipt.seq,
                                platform_message_id=receipt.platform_message_id, error=receipt.error)

    # --- container deaths and idle stops --------------------------------------------------------

    def on_death(self, died: Died) -> None:
        live = self.live.get(died.session_id)
        if live is None or live.container_id != died.container_id:
            return
        self._spawn(self._handle_death(live, died), f"death-{died.session_id}")

    async def _handle_death(self, live: Live, died: Died) -> None:
        async with self.session_locks.setdefault(live.info.id, asyncio.Lock()):
            if self.live.get(live.info.id) is not live:
                return
            expected = live.stopping
            await self.pump(live.info.id)  # whatever the agent said before it died still goes out
            self._forget(live.info.id)
            if not expected:
                self.counters["crashed"] += 1
                tail = await self.docker.logs_tail(died.container_id)
                log.error("container for session %s died (exit %d); last output:\n%s", live.info.id,
                          died.exit_code, tail, extra={"session_id": live.info.id})
                await self._fail_pending(
                    live.info, live.folder,
                    f"the agent's container stopped unexpectedly (exit code {died.exit_code}). "
                    "Please send your message again.")
            await self.docker.stop_and_remove(died.container_id, timeout=1)

    def _forget(self, session_id: str) -> None:
        live = self.live.pop(session_id, None)
        if live is not None and live.bell is not None:
            live.bell.close()

    async def stop_session(self, session_id: str, reason: str) -> None:
        live = self.live.get(session_id)
        if live is None or not live.container_id:
            return
        live.stopping = True
        log.info("stopping container of %s (%s)", session_id, reason, extra={"session_id": session_id})
        await self.docker.stop_and_remove(live.container_id)

    async def _stop_if_idle(self, live: Live) -> None:
        # A long turn is not idleness: the agent still owes an answer, so leave it working.
        if await asyncio.to_thread(sessiondb.has_unanswered, live.folder):
            live.last_activity = time.monotonic()
            return
        self.counters["idle_stopped"] += 1
        await self.stop_session(live.info.id, "idle")

    async def housekeeping(self) -> None:
        """Safety-net poll for lost rings, and idle stops. Rings do the real work."""
        poll = self.cfg.runner.safety_poll
        while not self.ctx.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.stopping.wait(), poll)
            now = time.monotonic()
            for session_id, live in list(self.live.items()):
                if not live.container_id:
                    continue
                self._spawn(self.pump(session_id), f"pump-{session_id}")  # not activity: no kick()
                if now - live.last_activity > self.cfg.runner.idle_timeout and not live.stopping:
                    self._spawn(self._stop_if_idle(live), f"idle-{session_id}")

    # --- restart ----------------------------------------------------------------------------------

    async def adopt(self) -> None:
        """After a restart: keep our running containers, clear dead ones, finish unanswered turns."""
        for container in await self.docker.ours():
            session_id = container.labels.get("dev.clawden.session", "")
            info = self.index.get(session_id)
            if container.status == "running" and info is not None:
                folder = self.session_dir(info)
                live = Live(info, folder, container_id=str(container.id))
                live.bell = await listen_bell(folder, functools.partial(self.kick, info.id), self.owner_uid)
                self.live[info.id] = live
                self.kick(info.id)
                log.info("adopted running container %s for %s", container.short_id, info.id)
            else:
                await self.docker.stop_and_remove(str(container.id), timeout=1)
        for info in self.index.all():
            if info.id in self.live:
                continue
            folder = self.session_dir(info)
            if not (folder / sessiondb.INBOUND).exists():
                continue
            self._spawn(self.pump(info.id), f"pump-{info.id}")
            pending = await asyncio.to_thread(sessiondb.pending_inbound, folder)
            if any(m.trigger for m in pending):
                log.info("session %s has unanswered messages; restarting its agent", info.id)
                self._spawn(self._resume(info, folder), f"resume-{info.id}")

    async def _resume(self, info: SessionInfo, folder: Path) -> None:
        async with self.session_locks.setdefault(info.id, asyncio.Lock()):
            if info.id not in self.live:
                try:
                    await self._start(info, folder)
                except Exception as exc:
                    log.error("could not resume %s: %s", info.id, exc)

    async def shutdown(self) -> None:
        # By default containers keep running across a runner restart; the next runner adopts them.
        if self.cfg.runner.stop_containers_on_exit:
            await asyncio.gather(*(self.stop_session(s, "runner exit") for s in list(self.live)),
                                 return_exceptions=True)
        for live in list(self.live.values()):
            if live.bell is not None:
                live.bell.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _host_timezone() -> str:
    try:
        return Path("/etc/timezone").read_text().strip()
    except OSError:
        return ""


async def main(ctx: ServiceContext) -> None:
    docker = Docker(ctx.config.install_id, ctx.config.runner.docker_workers)
    index = SessionIndex(ctx.config.data_dir / "runner.db")
    runner = Runner(ctx, docker, index)
    ctx.stats["runner"] = runner.counters
    try:
        await docker.ping()
        docker.watch_deaths(runner.on_death)
        await runner.adopt()
        wakes = await bind(ctx.js, runner_wake(ctx.config.runner.id))
        receipts = await bind(ctx.js, runner_receipts(ctx.config.runner.id))
        await ctx.ready(f"runner {ctx.config.runner.id}: {len(runner.live)} containers adopted")
        wake_stats, receipt_stats = ConsumeStats(), ConsumeStats()
        ctx.stats["wakes"], ctx.stats["receipts"] = wake_stats, receipt_stats
        async with asyncio.TaskGroup() as tg:
            tg.create_task(consume(wakes, ev.Wake, runner.on_wake, stopping=ctx.stopping, stats=wake_stats,
                                   concurrency=8))
            tg.create_task(consume(receipts, ev.DeliveryReceipt, runner.on_receipt, stopping=ctx.stopping,
                                   stats=receipt_stats))
            tg.create_task(runner.housekeeping())
    finally:
        await runner.shutdown()
        docker.close()
        index.close()
