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

import pytest

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.sessiondb import Fence
from tests.cluster.runnerloss import (
    SESSION,
    TURN,
    Shared,
    move_to_a,
    send,
    shared,  # noqa: F401  (the fixture)
    taken,
    wake,
)
from tests.eventually import eventually

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process]


async def test_a_wake_of_the_old_epoch_on_the_runner_the_session_moved_from_writes_and_sends_nothing(
    shared: Shared,  # noqa: F811
) -> None:
    nc = await shared.stack.connect()
    try:
        await shared.placed_on_b(nc, "first, on b")
        assert sessiondb.fence(shared.folder) == Fence(1, "b")

        await shared.moved_to_a(nc, "second, on a")
        assert sessiondb.fence(shared.folder) == Fence(2, "a")
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
    shared: Shared,  # noqa: F811
) -> None:
    nc = await shared.stack.connect()
    try:
        await shared.placed_on_b(nc, "before the stop")
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


async def test_a_runner_restarted_after_its_session_moved_drops_it_at_start(shared: Shared) -> None:  # noqa: F811
    nc = await shared.stack.connect()
    try:
        await shared.placed_on_b(nc, "before the kill")

        shared.kill_b()  # runner b dies; its container lives on, on "host b"
        await shared.moved_to_a(nc, "after the kill")
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
    shared: Shared,  # noqa: F811
) -> None:
    nc = await shared.stack.connect()
    try:
        await shared.placed_on_b(nc, "before the lock")

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
