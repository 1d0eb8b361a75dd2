"""Issue 25 item 3 on one machine playing two hosts: three NATS nodes, two runners whose session folders are on one
shared folder, chats talking throughout. A runner SIGKILLed: its sessions are moved and answered by the other. A
runner SIGSTOPped past `dead_after`, its sessions moved, then SIGCONTed: it and its containers write nothing more
into the moved sessions' folders and send nothing (the placement epoch fences them). Every message is answered
exactly once either way: a turn in flight at the move is run again by the new owner only if the old container had
not answered it. bench/cluster.py runs the same with 20 chats and reports the failover time."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from services.runner.containers import LABEL_INSTALL, LABEL_SESSION
from tests.chaos import chaos
from tests.cluster import runnerloss
from tests.cluster.runnerloss import Pair
from tests.eventually import eventually_sync

pytestmark = [pytest.mark.docker, pytest.mark.nats]
CHATS = 6


@pytest.fixture
def shared(tmp_path: Path, docker_client: docker.DockerClient, agent_image: str) -> Iterator[Pair]:
    # A slot for each chat once all are on a: these chats answer each reply at once, so a chat queued behind them
    # waits for an idle container that may not come for minutes on a loaded machine (a person leaves one).
    with runnerloss.pair(tmp_path, max_containers=CHATS) as p:
        yield p


def fences(p: Pair) -> dict[str, tuple[int, str]]:
    """session -> (epoch, runner) its folder is fenced with."""
    out = {}
    for db in (p.storage / "sessions").glob("*/*/inbound.db"):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT epoch, runner FROM fence").fetchone()
        if row is not None:
            out[db.parent.name] = (int(row[0]), str(row[1]))
    return out


def b_containers(p: Pair) -> list[str]:
    client = docker.from_env()
    try:
        return [
            c.labels[LABEL_SESSION]
            for c in client.containers.list(filters={"label": f"{LABEL_INSTALL}={p.b.install_id}"})
        ]
    finally:
        client.close()


async def test_a_killed_runners_sessions_are_answered_by_the_other(shared: Pair) -> None:
    loss = await runnerloss.lose_b(shared, "kill", chats=CHATS, messages=4, log=print)

    assert loss.figures == {"lost": 0, "duplicated": 0, "misrouted": 0}, chaos.mismatches(loss.chats)
    assert set(loss.moved.values()) == {runnerloss.A}  # every session on a once it is over
    assert all(wait < float("inf") for wait in loss.waits)  # each of b's chats was answered after the kill
    print(f"failover: b's chats answered again {sorted(round(w, 1) for w in loss.waits)} s after the kill")
    moved = {epoch_runner for epoch_runner in fences(shared).values() if epoch_runner[0] > 1}
    assert moved and {runner for _, runner in moved} == {runnerloss.A}
    eventually_sync(lambda: not b_containers(shared), 120, "runner b's containers did not stop once fenced out")


async def test_a_stopped_runner_that_comes_back_writes_and_sends_nothing_for_the_sessions_it_lost(
    shared: Pair,
) -> None:
    loss = await runnerloss.lose_b(shared, "stop", chats=CHATS, messages=4, log=print)

    assert loss.figures == {"lost": 0, "duplicated": 0, "misrouted": 0}, chaos.mismatches(loss.chats)
    assert set(loss.moved.values()) == {runnerloss.A}
    before = fences(shared)
    moved_sessions = {s for s, (epoch, _) in before.items() if epoch > 1}
    assert moved_sessions and {before[s][1] for s in moved_sessions} == {runnerloss.A}
    # b runs again, and its containers for the moved sessions stop by themselves: neither writes there
    eventually_sync(lambda: not (set(b_containers(shared)) & moved_sessions), 120, shared.b.log.read_text)
    assert shared.b.proc.poll() is None  # b lives on, serving whatever is still its own
    log = shared.b.log.read_text()
    assert all(f"session {s} moved to runner {runnerloss.A}" in log for s in moved_sessions), log[-3000:]
    assert fences(shared) == before  # nothing took a folder back
