"""Two runners on one shared storage folder, as the cluster tests and bench/cluster.py set them up: runner a (the
install's own, under `clawden up`) and runner b (another "host"), on the stack's NATS or a three-node cluster, one
Docker engine. With them: one session driven from b to a by hand (its wakes and adoptions published as the router
publishes them), and chats talking while runner b is lost (SIGKILL), or stopped past `dead_after` and let go on
(SIGSTOP, then SIGCONT): the count of what was lost, duplicated or misrouted, and how long the lost runner's chats
waited."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import docker
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config, control, natsauth, sessiondb, setup
from clawden.bus import ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import router as router_api
from clawden.bus.ctl.common import PING
from clawden.bus.streams import runner_wake
from clawden.cli.main import main as cli_main
from services.runner.containers import LABEL_INSTALL, LABEL_SESSION
from tests.chaos import chaos
from tests.cluster.nodes import Cluster
from tests.cluster.test_runners import SecondRunner
from tests.e2e.harness import Stack, start_stack
from tests.eventually import eventually

DEAD_AFTER = 3.0  # seconds: the runners beat every second, the router looks every second
A = "local"  # runner a's id unless told: the install's own runner, whose grant the cluster's nodes were written with
TURN = 180  # seconds a container start and a turn may take on a loaded machine: a bound, never a measure


@dataclass
class Pair:
    """Runner a (the install's own, id `a`, under `clawden up`) and runner b (another "host"), both with their
    session, group and agent-state folders on `storage`; on `nodes` where they talk to a cluster."""

    stack: Stack
    b: SecondRunner
    storage: Path
    nodes: Cluster | None = None
    a: str = A

    async def heard(self) -> dict[str, dict[str, float]]:
        """What the router last heard from each runner (`at`: by its clock, this machine's)."""
        pong = await control.ask(config.load(self.stack.home), PING.at("router"), Nothing())
        return dict(pong.stats.get("runners", {}))

    async def router_hears_both(self) -> bool:
        """Whether the router has heard both runners beat (so it places sessions on both)."""
        return {self.a, "b"} <= set(await self.heard())

    async def sessions(self, chats: list[str]) -> dict[str, router_api.Session]:
        """chat -> its session, as the router says."""
        found = await control.ask(
            config.load(self.stack.home), router_api.SESSIONS_LIST, router_api.GroupFilter(limit=1000)
        )
        return {s.chat_id: s for s in found if s.chat_id in chats}

    async def runners_of(self, chats: list[str]) -> dict[str, str]:
        """chat -> the runner its session is on now, as the router says."""
        return {chat: s.runner for chat, s in (await self.sessions(chats)).items()}


@contextlib.contextmanager
def two_runners(
    tmp: Path,
    *,
    a: str = "",
    b_runner: str = "",
    shared_storage: bool = False,
    max_containers: int = 4,
    cluster: bool = False,
) -> Iterator[Pair]:
    """Runner a, with id `a` (else the install's own `local`), and runner b (`b_runner`: more `[runner]` lines for
    it), on one storage folder. `shared_storage`: as `[runner] shared_storage` (the router moves the sessions of a
    runner gone past `dead_after`), with the group folders the owner put on the storage; else the tests move
    sessions themselves. `cluster`: on three NATS nodes, not the stack's one server."""
    home, storage = tmp / "host-a", tmp / "shared"
    setup.init(home)
    assert cli_main(["--home", str(home), "runners", "add", "b"]) == 0
    sharing = f'storage = "{storage}"'
    if shared_storage:
        shutil.copytree(home / "groups", storage / "groups")  # main's memory, where the owner put it
        sharing = f"shared_storage = true\n{sharing}\ndead_after = {DEAD_AFTER}\nmax_containers = {max_containers}"
    nodes = Cluster(home).start() if cluster else None  # after `runners add`: the nodes know b's grant
    nats = nodes.nats_settings if nodes else ""
    stack = b = None
    try:
        stack = start_stack(home, nats=nats, runner=f'id = "{a}"\n{sharing}' if a else sharing)
        seed = natsauth.seed_path(config.load(home), "runner-b")
        runner_b = f"{sharing}\n{b_runner}" if b_runner else sharing
        b = SecondRunner(tmp / "host-b", "" if nodes else stack.nats_url, seed, nats=nats, runner=runner_b)
        yield Pair(stack, b, storage, nodes, a or A)
    finally:
        if b is not None:
            b.close()
        if stack is not None:
            stack.stop()
        if nodes is not None:
            nodes.stop()


@contextlib.contextmanager
def pair(tmp: Path, max_containers: int = 4) -> Iterator[Pair]:
    """Two runners on a cluster whose router moves the sessions of one gone, once the router has heard both."""
    with two_runners(tmp, shared_storage=True, max_containers=max_containers, cluster=True) as p:
        asyncio.run(eventually(p.router_hears_both, 120, lambda: p.b.log.read_text()[-3000:]))
        yield p


# ---- one session moved by hand, its wakes and adoption published as the router does ----------------------------

SESSION, CHAT = "sess-fenced", "chat-fenced"
ROUTE = ev.Route(channel="local", chat_id=CHAT)


class Shared:
    """Runner a (id `a`) and runner b, their sessions, groups and agent states on one folder, as with `[runner]
    shared_storage` (left off: the tests move the session, not the router), and what happened to SESSION."""

    def __init__(self, stack: Stack, b: SecondRunner, storage: Path) -> None:
        self.stack, self.b, self.storage = stack, b, storage
        self.folder = storage / "sessions" / "main" / SESSION
        self.sent: list[ev.Outbound] = []  # every publish on the chat's outbound subject, duplicates too

    async def watch(self, nc: Client) -> None:
        async def on(msg: Msg) -> None:
            self.sent.append(ev.OUTBOUND_DECODER.decode(msg.data))

        await nc.subscribe(subjects.outbound(ROUTE.channel, ROUTE.chat_id), cb=on)

    async def placed_on_b(self, nc: Client, text: str) -> None:
        """Every publish for the chat watched, then the session placed on runner b (epoch 1) by a wake of `text`,
        answered there, and its folder at rest: the turn's end too (its closing model call, the ack), since a move
        before it leaves the message to a's container, which answers it again (at least once, never lost)."""
        await self.watch(nc)
        await send(nc, "b", wake(text, 1))
        await eventually(lambda: self.replies(text), TURN, lambda: self.b.log.read_text()[-3000:])
        await eventually(self.settled, TURN)

    async def moved_to_a(self, nc: Client, text: str) -> None:
        """The session moved to runner a (an Adopt at epoch 2), then a wake of `text` to a, answered there, and the
        folder at rest."""
        await move_to_a(nc)
        await send(nc, "a", wake(text, 2))
        await eventually(lambda: self.replies(text), TURN, lambda: self.stack.output[-40:])
        await eventually(self.settled, TURN)

    def replies(self, text: str) -> set[str]:
        """The distinct replies (by event id) that answer the message `text` (the fake model echoes it)."""
        return {e.id for e in self.sent if isinstance(e, ev.OutboundMessage) and f">{text}</message>" in e.text}

    def b_said(self, line: str, after: int = 0) -> str | None:
        """Runner b's log (from character `after` on), once it holds `line`."""
        text = self.b.log.read_text()[after:]
        return text if line in text else None

    def kill_b(self) -> None:
        self.b.proc.kill()
        self.b.proc.wait()

    def restart_b(self) -> None:
        """Runner b again, from its home as it was (the fixture's close stops this one)."""
        with self.b.log.open("ab") as out:
            self.b.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", "runner"],
                env=dict(os.environ, CLAWDEN_HOME=str(self.b.home)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def installs(self) -> dict[str, str]:
        """container id -> install, for every container (running or not) of the session."""
        client = docker.from_env()
        try:
            found = client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={SESSION}"})
            return {c.id: c.labels[LABEL_INSTALL] for c in found}
        finally:
            client.close()

    def running_on(self, install: str) -> bool:
        client = docker.from_env()
        try:
            found = client.containers.list(
                filters={"label": [f"{LABEL_SESSION}={SESSION}", f"{LABEL_INSTALL}={install}"]}
            )
            return bool(found)
        finally:
            client.close()

    def settled(self) -> bool:
        """Every message answered and every outbound row published: the folder is at rest."""
        if sessiondb.unfinished(self.folder) or sessiondb.has_unanswered(self.folder):
            return False
        return not sessiondb.read_new_outbound(self.folder)

    def rows(self) -> dict[str, list[tuple[object, ...]]]:
        """Every row of both files, the fence among them."""
        tables = {
            sessiondb.INBOUND: ("messages_in", "delivered", "destinations", "session_routing", "host_cursor", "fence"),
            sessiondb.OUTBOUND: ("messages_out", "processing_ack", "session_state", "turn_cost"),
        }
        seen: dict[str, list[tuple[object, ...]]] = {}
        for name, wanted in tables.items():
            with sessiondb.opened(self.folder / name, readonly=True) as conn:
                for table in wanted:
                    seen[table] = [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
        return seen


@contextlib.contextmanager
def shared_folder(tmp: Path, b_runner: str = "") -> Iterator[Shared]:
    """Runner a (id `a`) and runner b on one storage folder, the session not yet anywhere; `b_runner`: more
    `[runner]` lines for b."""
    with two_runners(tmp, a="a", b_runner=b_runner) as p:
        yield Shared(p.stack, p.b, p.storage)


@pytest.fixture
def shared(tmp_path: Path, docker_client: docker.DockerClient, agent_image: str) -> Iterator[Shared]:
    with shared_folder(tmp_path) as s:
        yield s


def wake(text: str, epoch: int) -> ev.Wake:
    message = ev.WakeMessage(id=f"m-{text}", kind="chat", text=text, sender=ev.Sender(id="owner"))
    return ev.Wake(session_id=SESSION, agent_group="main", route=ROUTE, message=message, epoch=epoch)


async def send(nc: Client, runner: str, event: ev.Wake | ev.Adopt) -> int:
    """Publish on the runner's wake subject as the router does; the stream sequence it got."""
    js = nc.jetstream()
    await ensure_streams(js)
    # A wake sent again to the session's new runner gets a key of its own, as the router gives it: the first is still
    # in the stream's dedupe window.
    key = f"{event.key}@{event.epoch}" if isinstance(event, ev.Wake) and event.epoch > 1 else event.key
    return (await publish(js, subjects.wake(runner), event, msg_id=key)).seq


async def move_to_a(nc: Client) -> None:
    adopt = ev.Adopt(session_id=SESSION, agent_group="main", route=ROUTE, epoch=2, from_runner="b")
    await send(nc, "a", adopt)


async def taken(nc: Client, runner: str, seq: int) -> bool:
    """The runner's wake durable has acked everything up to `seq`: its handler returned for that wake."""
    info = await nc.jetstream().consumer_info("CLAWDEN_WAKE", runner_wake(runner).durable)
    return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq and not info.num_ack_pending


# ---- a runner lost under chat traffic --------------------------------------------------------------------------


@dataclass
class Loss:
    figures: dict[str, int]
    chats: list[chaos.Chat]
    on_b: list[str]  # the chats whose sessions were on b when it was lost
    waits: list[float] = field(default_factory=list)  # for each: seconds from the loss to its next reply
    moved: dict[str, str] = field(default_factory=dict)  # chat -> runner once it was over


async def lose_b(
    p: Pair,
    how: Literal["kill", "stop"],
    *,
    chats: int,
    messages: int,
    reply_timeout: float = 180,
    log: Callable[[str], None] = lambda _: None,
) -> Loss:
    """`chats` chats send at least `messages` each, one at a time; once every chat has had a reply and runner b
    holds some sessions, b is SIGKILLed (`kill`), or SIGSTOPped until the router has moved its sessions to a and
    then SIGCONTed (`stop`). The chats talk on until each of b's has been answered after the loss."""
    talking = [chaos.Chat(f"shared-{i}") for i in range(chats)]
    by_name = {c.name: c for c in talking}
    names = list(by_name)
    over = asyncio.Event()
    traffic = asyncio.gather(*(chaos.talk(p.stack, c, messages, reply_timeout, over) for c in talking))
    try:
        await eventually(lambda: all(c.replies for c in talking) or traffic.done(), reply_timeout)
        where = await p.runners_of(names)
        on_b = sorted(chat for chat, runner in where.items() if runner == "b")
        assert on_b, f"placement put no session on runner b: {where}"
        log(f"{how}: runner b, holding {len(on_b)} of {chats} sessions")
        lost_at = time.monotonic()
        os.kill(p.b.proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        try:

            async def all_moved() -> bool:
                return set((await p.runners_of(on_b)).values()) == {A}

            await eventually(all_moved, reply_timeout, lambda: p.b.log.read_text()[-3000:])
            log(f"moved to runner a after {time.monotonic() - lost_at:.1f} s")
        finally:
            if how == "stop":
                os.kill(p.b.proc.pid, signal.SIGCONT)

        def answered_since() -> bool:
            return all(by_name[chat].replied_at[-1] > lost_at for chat in on_b) or traffic.done()

        await eventually(answered_since, reply_timeout)
        over.set()
        await traffic
    finally:
        traffic.cancel()
        with contextlib.suppress(BaseException):
            await traffic
    waits = [next((t - lost_at for t in by_name[chat].replied_at if t > lost_at), float("inf")) for chat in on_b]
    return Loss(chaos.check(talking), talking, on_b, waits, await p.runners_of(names))
