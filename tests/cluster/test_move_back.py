"""A session moved from one runner to another and back again (issue 25 item 3), while the first still has state
for it: its container (the host was only frozen), its live table's entry or its memo of the move, its bell, its
runner.db row. Two real runner processes on one shared storage folder, one NATS, one Docker engine, Claude Code
through the fake model. Every message is answered exactly once, by the runner the session came back to; the fence
ends at the latest epoch for it; no container of the other runner, nor one of its own at an older epoch, is left;
nothing is published twice (every publish on the chat's outbound subject is counted, duplicates too).

The first test lets the router move it (each runner SIGSTOPped past `dead_after` in turn). The second publishes the
adoptions itself, as the router does, so the move back reaches a runner whose host (runner and container) was
frozen through both moves; then a wake of the first placement, late, reaches the runner holding the session. The
third has the Adopt find the runner's old container still live (the runner had not looked since the session left:
its safety poll is an hour, the container paused), which the Adopt restarts at the new epoch."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from clawden.bus.ctl import router as router_api
from clawden.sessiondb import Fence
from services.runner.containers import LABEL_INSTALL, LABEL_SESSION
from tests.chaos.chaos import answer
from tests.cluster.runnerloss import (
    ROUTE,
    SESSION,
    TURN,
    Pair,
    Shared,
    send,
    shared,  # noqa: F401  (the fixture)
    shared_folder,
    taken,
    two_runners,
    wake,
)
from tests.e2e.harness import Terminal
from tests.eventually import eventually

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process]
CHAT = "back-and-forth"


def containers(session: str, install: str) -> dict[str, tuple[str, str]]:
    """container id -> (status, CLAWDEN_EPOCH), for each container of `install` for `session`, running or not."""
    client = docker.from_env()
    try:
        found = client.containers.list(
            all=True, filters={"label": [f"{LABEL_SESSION}={session}", f"{LABEL_INSTALL}={install}"]}
        )
        return {str(c.id): (str(c.status), _epoch(c.attrs["Config"]["Env"] or [])) for c in found}
    finally:
        client.close()


def _epoch(env: list[str]) -> str:
    return next((e.split("=", 1)[1] for e in env if e.startswith("CLAWDEN_EPOCH=")), "")


def published(sent: list[ev.Outbound], text: str) -> int:
    """How many times a reply to `text` was published (the fake model echoes it), a duplicate JetStream drops too."""
    return sum(1 for e in sent if isinstance(e, ev.OutboundMessage) and f">{text}</message>" in e.text)


# ---- the router moves it ------------------------------------------------------------------------------------


@dataclass
class Host:
    """One runner as the test drives it: its id, the pid of its process, its log and its containers' install."""

    id: str
    pid: int
    log: Path
    install: str


async def session(p: Pair) -> router_api.Session | None:
    return (await p.sessions([CHAT])).get(CHAT)


async def hosts(p: Pair, nc: Client) -> dict[str, Host]:
    """Both runners by id. Runner a runs under `clawden up`: its pid is the one that answers the runners' shared
    ping and is not b's (the runners answer it as a queue group: one each time, so it is asked until both did)."""
    pids: set[int] = set()

    async def on(msg: Msg) -> None:
        pids.add(int(msgspec.json.decode(msg.data)["pid"]))

    async def both() -> bool:
        await nc.publish(subjects.ctl("runner", "ping"), b"", reply=inbox)
        return len(pids) == 2

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on)
    try:
        await eventually(both, 30, lambda: pids)
    finally:
        await sub.unsubscribe()
    (a_pid,) = pids - {p.b.proc.pid}
    return {
        "a": Host("a", a_pid, p.stack.home / "logs" / "runner.log", p.stack.install_id),
        "b": Host("b", p.b.proc.pid, p.b.log, p.b.install_id),
    }


@pytest.fixture
def pair(tmp_path: Path, docker_client: docker.DockerClient, agent_image: str) -> Iterator[Pair]:
    """Runners a and b with `[runner] shared_storage`: the router moves the session of one gone past dead_after."""
    with two_runners(tmp_path, a="a", shared_storage=True, max_containers=2) as p:
        yield p


async def test_a_session_the_router_moves_away_and_back_is_answered_once_by_the_runner_it_came_back_to(
    pair: Pair,
) -> None:
    nc = await pair.stack.connect()
    sent: list[ev.Outbound] = []

    async def on(msg: Msg) -> None:
        sent.append(ev.OUTBOUND_DECODER.decode(msg.data))

    await nc.subscribe(subjects.outbound("local", CHAT), cb=on)
    await eventually(pair.router_hears_both, 120, lambda: pair.b.log.read_text()[-3000:])
    runners = await hosts(pair, nc)
    try:
        async with Terminal(pair.stack, CHAT) as term:

            async def ask(text: str, where: str) -> None:
                await term.send(text)
                reply = await answer(term, TURN)
                assert f">{text}<" in reply.text, reply.text
                # The turn's end too (its closing ack): the folder at rest before anything moves.
                await eventually(lambda: _settled(folder), TURN, lambda: runners[where].log.read_text()[-3000:])

            await term.send("one")
            assert ">one<" in (await answer(term, TURN)).text
            placed = await eventually(lambda: session(pair), 30)
            first, other = runners[placed.runner], runners["b" if placed.runner == "a" else "a"]
            folder = pair.storage / "sessions" / "main" / placed.id
            await eventually(lambda: _settled(folder), TURN)
            assert sessiondb.fence(folder) == Fence(1, first.id)

            # The first runner frozen past dead_after (its container runs on): the router moves the session.
            os.kill(first.pid, signal.SIGSTOP)
            try:
                await ask("two", other.id)
                moved = await session(pair)
                assert moved is not None and moved.runner == other.id
                assert sessiondb.fence(folder) == Fence(2, other.id)
            finally:
                os.kill(first.pid, signal.SIGCONT)
                let_go = time.time()

            # The first runner beats again; the other is frozen at once, while the first may still hold its old
            # container, its live entry or its memo of the move: the router moves the session back to it.
            await eventually(lambda: _heard_since(pair, first.id, let_go), 60)
            os.kill(other.pid, signal.SIGSTOP)
            try:
                await ask("three", first.id)
                assert sessiondb.fence(folder) == Fence(3, first.id)
            finally:
                os.kill(other.pid, signal.SIGCONT)

            await ask("four", first.id)  # the session talks on where it came back to, the other runner let go on
            now = await session(pair)
            assert now is not None and now.runner == first.id
            # the other runner drops it when it looks (its container stopped by itself on the fence), and removes
            # its container; the first keeps one, at the latest epoch
            await eventually(
                lambda: f"session {placed.id} moved to runner {first.id} at epoch 3" in other.log.read_text(), TURN
            )
            await eventually(
                lambda: not containers(placed.id, other.install), TURN, lambda: other.log.read_text()[-3000:]
            )
            running = [e for status, e in containers(placed.id, first.install).values() if status == "running"]
            assert running == ["3"], containers(placed.id, first.install)
            log = first.log.read_text()
            assert f"session {placed.id} moved to runner {first.id}" not in log  # it never dropped its own session
            assert f"container for session {placed.id}" not in log  # nor took a stale container, which then died
            await nc.flush()
            assert sessiondb.fence(folder) == Fence(3, first.id)
            assert [published(sent, t) for t in ("one", "two", "three", "four")] == [1, 1, 1, 1]
    finally:
        await nc.close()


async def _heard_since(p: Pair, runner: str, since: float) -> bool:
    return (await p.heard()).get(runner, {}).get("at", 0.0) > since


def _settled(folder: Path) -> bool:
    if not (folder / sessiondb.INBOUND).exists():
        return False
    if sessiondb.unfinished(folder) or sessiondb.has_unanswered(folder):
        return False
    return not sessiondb.read_new_outbound(folder)


# ---- the adoptions published as the router does ------------------------------------------------------------


@pytest.fixture
def unpolled(tmp_path: Path, docker_client: docker.DockerClient, agent_image: str) -> Iterator[Shared]:
    """Runner b with no safety poll to speak of: it looks at a session's fence only when told something of it."""
    with shared_folder(tmp_path, "safety_poll = 3600") as s:
        yield s


def frozen(container_id: str, pause: bool) -> None:
    client = docker.from_env()
    try:
        target = client.containers.get(container_id)
        target.pause() if pause else target.unpause()
    finally:
        client.close()


async def test_a_session_adopted_back_by_a_runner_whose_host_was_frozen_with_its_container_is_answered_there_once(
    shared: Shared,  # noqa: F811
) -> None:
    nc = await shared.stack.connect()
    b = shared.b
    try:
        await shared.placed_on_b(nc, "one, on b")
        (old,) = containers(SESSION, b.install_id)  # b's container, idle at epoch 1

        # Host b frozen, its runner and its container: the session moves to a and is answered there.
        os.kill(b.proc.pid, signal.SIGSTOP)
        frozen(old, pause=True)
        try:
            await shared.moved_to_a(nc, "two, on a")
            assert sessiondb.fence(shared.folder) == Fence(2, "a")
            # Then a is lost in turn, and the session moves back to b while b is still frozen: b's live table
            # still holds its epoch-1 container, which has not seen either move.
            adopt = ev.Adopt(session_id=SESSION, agent_group="main", route=wake("", 3).route, epoch=3, from_runner="a")
            await send(nc, "b", adopt)
            untaken = await send(nc, "b", wake("three, back on b", 3))
        finally:
            frozen(old, pause=False)  # the host let go on: both at once
            os.kill(b.proc.pid, signal.SIGCONT)

        await eventually(lambda: shared.replies("three, back on b"), TURN, lambda: b.log.read_text()[-3000:])
        await eventually(lambda: taken(nc, "b", untaken), TURN)
        await eventually(shared.settled, TURN)
        assert sessiondb.fence(shared.folder) == Fence(3, "b")
        # a saw the fence move and dropped the session; its container is gone
        log = shared.stack.home / "logs" / "runner.log"
        await eventually(lambda: f"session {SESSION} moved to runner b at epoch 3" in log.read_text(), TURN)
        await eventually(lambda: not containers(SESSION, shared.stack.install_id), TURN, shared.installs)
        # b's epoch-1 container is gone (stopped by b, or by itself on the fence); the one running is at epoch 3
        await eventually(
            lambda: old not in containers(SESSION, b.install_id), TURN, lambda: containers(SESSION, b.install_id)
        )
        running = [e for status, e in containers(SESSION, b.install_id).values() if status == "running"]
        assert running == ["3"], containers(SESSION, b.install_id)

        # A wake of the first placement, late (redelivered after a locked folder's retry, or sent on a placement
        # read before the moves), reaches b, which holds the session again at a later epoch: the session is
        # still b's, and the message is answered there.
        late = await send(nc, "b", wake("four, late, epoch 1", 1))
        await eventually(lambda: taken(nc, "b", late), TURN)
        await eventually(lambda: shared.replies("four, late, epoch 1"), TURN, lambda: b.log.read_text()[-3000:])
        await eventually(shared.settled, TURN)
        await nc.flush()

        assert sessiondb.fence(shared.folder) == Fence(3, "b")
        log_b = b.log.read_text()
        assert f"session {SESSION} moved to runner b" not in log_b  # b never dropped its own session
        # nor took its stale container for the new one, which then died on the fence as a crash to retry
        assert f"container for session {SESSION}" not in log_b
        texts = ("one, on b", "two, on a", "three, back on b", "four, late, epoch 1")
        assert [published(shared.sent, t) for t in texts] == [1, 1, 1, 1]
        running = [e for status, e in containers(SESSION, b.install_id).values() if status == "running"]
        assert running == ["3"], containers(SESSION, b.install_id)
    finally:
        await nc.close()


async def test_an_adoption_back_onto_a_runner_whose_old_container_still_runs_restarts_it_at_the_new_epoch(
    unpolled: Shared,
) -> None:
    """The path where b has not looked since the session left: its epoch-1 container (paused: it never polls
    either) is still its live one when the Adopt brings the session back."""
    shared, b = unpolled, unpolled.b  # noqa: F811  (not the fixture: b with no safety poll)
    nc = await shared.stack.connect()
    try:
        await shared.placed_on_b(nc, "one, on b")
        (old,) = containers(SESSION, b.install_id)

        frozen(old, pause=True)
        try:
            await shared.moved_to_a(nc, "two, on a")
            assert f"session {SESSION} moved" not in b.log.read_text()  # b has not looked: its container is live

            adopt = ev.Adopt(session_id=SESSION, agent_group="main", route=wake("", 3).route, epoch=3, from_runner="a")
            await send(nc, "b", adopt)
            await send(nc, "b", wake("three, back on b", 3))
            await eventually(lambda: shared.replies("three, back on b"), TURN, lambda: b.log.read_text()[-3000:])
        finally:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                frozen(old, pause=False)
        await eventually(shared.settled, TURN)

        log = b.log.read_text()
        assert f"stopping container of {SESSION} (restarting" in log  # the Adopt restarted the old one
        assert "could not start a container" not in log  # its start waited for the old one's removal
        assert old not in containers(SESSION, b.install_id)
        running = [e for status, e in containers(SESSION, b.install_id).values() if status == "running"]
        assert running == ["3"], containers(SESSION, b.install_id)
        assert f"session {SESSION} moved" not in log and f"container for session {SESSION}" not in log
        a_log = shared.stack.home / "logs" / "runner.log"
        await eventually(lambda: f"session {SESSION} moved to runner b at epoch 3" in a_log.read_text(), TURN)
        await eventually(lambda: not containers(SESSION, shared.stack.install_id), TURN, shared.installs)
        await nc.flush()
        assert sessiondb.fence(shared.folder) == Fence(3, "b")
        texts = ("one, on b", "two, on a", "three, back on b")
        assert [published(shared.sent, t) for t in texts] == [1, 1, 1]
    finally:
        await nc.close()


async def test_an_adoption_delivered_again_after_its_container_started_leaves_that_container_be(
    shared: Shared,  # noqa: F811
) -> None:
    """An Adopt redelivered (the runner's ack lost, or the router's publish retried past the dedupe window) after a
    wake had started the session's container at the adoption's own epoch: that container serves on, not restarted."""
    nc = await shared.stack.connect()
    a_log = shared.stack.home / "logs" / "runner.log"
    try:
        await shared.placed_on_b(nc, "one, on b")
        await shared.moved_to_a(nc, "two, on a")
        (first,) = [c for c, (status, _) in containers(SESSION, shared.stack.install_id).items() if status == "running"]

        again = ev.Adopt(session_id=SESSION, agent_group="main", route=ROUTE, epoch=2, from_runner="b")
        seq = (await publish(nc.jetstream(), subjects.wake("a"), again, msg_id=f"{again.key}-again")).seq
        await eventually(lambda: taken(nc, "a", seq), TURN)
        await send(nc, "a", wake("three, on a", 2))
        await eventually(lambda: shared.replies("three, on a"), TURN, lambda: shared.stack.output[-40:])
        await eventually(shared.settled, TURN)

        assert f"stopping container of {SESSION}" not in a_log.read_text()
        assert containers(SESSION, shared.stack.install_id) == {first: ("running", "2")}
        assert [published(shared.sent, t) for t in ("one, on b", "two, on a", "three, on a")] == [1, 1, 1]
    finally:
        await nc.close()
