"""Session-folder fencing with the placement epoch (issue 25 item 3), with two real runner processes on one shared
storage folder (one NATS, one Docker engine, Claude Code through the fake model): a session moved from runner b
to runner a (an Adopt at a later epoch, then its wakes again, as the router sends them) is answered by a, and b,
stale (a wake of the old epoch, or a process stopped while the move happened and let go on), and b's container
write nothing into the session folder and send nothing for it. The tests publish the wakes and adoptions
themselves, as the router does."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config, natsauth, sessiondb, setup
from clawden.bus import ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.streams import runner_wake
from clawden.cli.main import main as cli_main
from clawden.sessiondb import Fence
from services.runner.containers import LABEL_INSTALL, LABEL_SESSION
from tests.cluster.test_runners import SecondRunner
from tests.e2e.harness import Stack, start_stack
from tests.eventually import eventually

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process]
SESSION, CHAT = "sess-fenced", "chat-fenced"
ROUTE = ev.Route(channel="local", chat_id=CHAT)
TURN = 180  # seconds a container start and a turn may take on a loaded machine: a bound, never a measure


class Shared:
    """Runner a (the install's own) and runner b (another "host"), their sessions, groups and agent states on one
    folder, as with `[runner] shared_storage` (left off here: the tests move the session, not the router)."""

    def __init__(self, stack: Stack, b: SecondRunner, storage: Path) -> None:
        self.stack, self.b, self.storage = stack, b, storage
        self.folder = storage / "sessions" / "main" / SESSION
        self.sent: list[ev.Outbound] = []  # every publish on the chat's outbound subject, duplicates too

    async def watch(self, nc: Client) -> None:
        async def on(msg: Msg) -> None:
            self.sent.append(ev.OUTBOUND_DECODER.decode(msg.data))

        await nc.subscribe(subjects.outbound(ROUTE.channel, ROUTE.chat_id), cb=on)

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


@pytest.fixture
def shared(tmp_path: Path, docker_client: docker.DockerClient, agent_image: str) -> Iterator[Shared]:
    home, storage = tmp_path / "host-a", tmp_path / "shared"
    setup.init(home)
    assert cli_main(["--home", str(home), "runners", "add", "b"]) == 0
    stack = start_stack(home, runner=f'id = "a"\nstorage = "{storage}"')
    seed = natsauth.seed_path(config.load(home), "runner-b")
    b = SecondRunner(tmp_path / "host-b", stack.nats_url, seed, runner=f'storage = "{storage}"')
    yield Shared(stack, b, storage)
    b.close()
    stack.stop()


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


async def test_a_wake_of_the_old_epoch_on_the_runner_the_session_moved_from_writes_and_sends_nothing(
    shared: Shared,
) -> None:
    nc = await shared.stack.connect()
    try:
        await shared.watch(nc)
        await send(nc, "b", wake("first, on b", 1))
        await eventually(lambda: shared.replies("first, on b"), TURN, lambda: shared.b.log.read_text()[-3000:])
        # The turn's end too (its closing model call, the ack): a move before it leaves the message to a's
        # container, which answers it again (at least once, never lost).
        await eventually(shared.settled, TURN)
        assert sessiondb.fence(shared.folder) == Fence(1, "b")

        await move_to_a(nc)
        await send(nc, "a", wake("second, on a", 2))
        await eventually(lambda: shared.replies("second, on a"), TURN, lambda: shared.stack.output[-40:])
        assert sessiondb.fence(shared.folder) == Fence(2, "a")
        await eventually(shared.settled, TURN)
        before, said = shared.rows(), len(shared.sent)

        seq = await send(nc, "b", wake("third, stale, on b", 1))
        await eventually(lambda: taken(nc, "b", seq), TURN, lambda: shared.b.log.read_text()[-3000:])
        await nc.flush()

        assert shared.rows() == before  # no row, no fence, no routing: nothing in either file
        assert len(shared.sent) == said and not shared.replies("third, stale, on b")  # no typing, no reply
        log = shared.b.log.read_text()
        assert f"session {SESSION} moved to runner a at epoch 2" in log
        # b's container saw the move on its own idle poll and stopped; b took it away
        await eventually(lambda: not shared.running_on(shared.b.install_id), TURN, lambda: shared.installs())
        assert [len(shared.replies(t)) for t in ("first, on b", "second, on a")] == [1, 1]
    finally:
        await nc.close()


async def test_a_runner_stopped_while_its_session_moved_and_let_go_on_writes_and_sends_nothing(
    shared: Shared,
) -> None:
    nc = await shared.stack.connect()
    try:
        await shared.watch(nc)
        await send(nc, "b", wake("before the stop", 1))
        await eventually(lambda: shared.replies("before the stop"), TURN, lambda: shared.b.log.read_text()[-3000:])
        await eventually(shared.settled, TURN)
        assert shared.running_on(shared.b.install_id)  # its container waits for the next message

        os.kill(shared.b.proc.pid, signal.SIGSTOP)  # the runner, not its container: that runs on
        try:
            untaken = await send(nc, "b", wake("while b is stopped", 1))  # b's durable hands it over; b sleeps
            await move_to_a(nc)
            await send(nc, "a", wake("while b is stopped", 2))  # the wake b had not taken, again, at epoch 2
            await eventually(lambda: shared.replies("while b is stopped"), TURN, lambda: shared.stack.output[-40:])
            # b's container, on its own, found the fence moved and exited (b, stopped, cannot remove it)
            await eventually(lambda: not shared.running_on(shared.b.install_id), TURN, lambda: shared.installs())
            await eventually(shared.settled, TURN)
            before, said = shared.rows(), len(shared.sent)
        finally:
            os.kill(shared.b.proc.pid, signal.SIGCONT)

        await eventually(lambda: taken(nc, "b", untaken), TURN, lambda: shared.b.log.read_text()[-3000:])
        log = await eventually(lambda: shared.b_said(f"session {SESSION} moved to runner a at epoch 2"), TURN)
        # b removes its exited container (its death is no crash to retry): only a's is left
        await eventually(lambda: set(shared.installs().values()) == {shared.stack.install_id}, TURN, shared.installs)
        await nc.flush()

        assert shared.rows() == before and sessiondb.fence(shared.folder) == Fence(2, "a")
        assert len(shared.sent) == said  # b sent nothing, not even a duplicate JetStream would have dropped
        assert [len(shared.replies(t)) for t in ("before the stop", "while b is stopped")] == [1, 1]
        assert f"container for session {SESSION}" not in log  # its container's exit was no crash, nor a hang
    finally:
        await nc.close()


async def test_a_runner_restarted_after_its_session_moved_drops_it_at_start(shared: Shared) -> None:
    nc = await shared.stack.connect()
    try:
        await shared.watch(nc)
        await send(nc, "b", wake("before the kill", 1))
        await eventually(lambda: shared.replies("before the kill"), TURN, lambda: shared.b.log.read_text()[-3000:])
        await eventually(shared.settled, TURN)

        shared.kill_b()  # runner b dies; its container lives on, on "host b"
        await move_to_a(nc)
        await send(nc, "a", wake("after the kill", 2))
        await eventually(lambda: shared.replies("after the kill"), TURN, lambda: shared.stack.output[-40:])
        await eventually(shared.settled, TURN)
        before, said, logged = shared.rows(), len(shared.sent), len(shared.b.log.read_text())

        shared.restart_b()  # from the same home: its runner.db says it held the session at epoch 1
        since = await eventually(lambda: shared.b_said("runner ready", after=logged), TURN)
        await nc.flush()

        assert f"session {SESSION} moved to runner a at epoch 2" in since  # dropped by adopt(), before taking wakes
        assert shared.rows() == before and len(shared.sent) == said
        # its container, stopped by itself on the fence or by b at start, is gone: only a's is left
        await eventually(lambda: set(shared.installs().values()) == {shared.stack.install_id}, TURN, shared.installs)
    finally:
        await nc.close()


async def test_a_folder_left_locked_by_a_writer_stopped_mid_write_delays_the_move_and_loses_nothing(
    shared: Shared,
) -> None:
    nc = await shared.stack.connect()
    try:
        await shared.watch(nc)
        await send(nc, "b", wake("before the lock", 1))
        await eventually(lambda: shared.replies("before the lock"), TURN, lambda: shared.b.log.read_text()[-3000:])
        await eventually(shared.settled, TURN)

        # A writer frozen inside its transaction (runner b stopped mid-write) keeps inbound.db's write lock.
        frozen = sqlite3.connect(shared.folder / sessiondb.INBOUND, isolation_level=None)
        try:
            frozen.execute("BEGIN IMMEDIATE")
            await move_to_a(nc)
            await send(nc, "a", wake("during the lock", 2))
            log = shared.stack.home / "logs" / "runner.log"
            await eventually(lambda: "its folder is locked" in log.read_text(), TURN, lambda: log.read_text()[-3000:])
        finally:
            frozen.execute("ROLLBACK")
            frozen.close()

        await eventually(lambda: shared.replies("during the lock"), TURN, lambda: log.read_text()[-3000:])
        await eventually(shared.settled, TURN)
        assert sessiondb.fence(shared.folder) == Fence(2, "a")
        assert [len(shared.replies(t)) for t in ("before the lock", "during the lock")] == [1, 1]
        errors = [e for e in shared.sent if isinstance(e, ev.OutboundMessage) and e.kind == "error"]
        assert not errors  # a lock is no damaged storage: the chat is told nothing of it
    finally:
        await nc.close()
