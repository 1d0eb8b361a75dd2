"""The router places each new session on a live runner (issue 25, item 2): two runner processes with separate
homes and ids on one NATS and one Docker engine (as tests/cluster/test_runners.py runs them), real containers
and Claude Code answering through the fake model. A pinned group's sessions all go to its runner, however
busy; unpinned, new sessions go to the runner with more free slots; an existing session keeps its runner.
A runner's heartbeat names the groups whose extra mounts its host has. The pure rule is tested as tables in
tests/router/test_placement.py."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from nats.aio.msg import Msg

from clawden import config, control, setup
from clawden.bus import connect, ctl, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_api
from clawden.cli.status import gather, render
from tests.cluster.test_runners import SecondRunner, installs_of
from tests.conftest import NatsServer
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.eventually import eventually


@pytest.fixture
def two_runners(
    tmp_path: Path, nats_server: NatsServer, docker_client: docker.DockerClient, agent_image: str
) -> Iterator[tuple[Stack, SecondRunner]]:
    stack = start_stack(tmp_path / "host-a", nats=f'url = "{nats_server.url}"', runner='id = "a"')
    second = SecondRunner(tmp_path / "host-b", nats_server.url)
    yield stack, second
    second.close()
    stack.stop()


def clawden(stack: Stack, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clawden", *argv], env=stack.env(), capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


async def heard(stack: Stack) -> dict[str, Any]:
    """What the router last heard from each runner (its ping's stats): what it places by."""
    pong = await control.ask(config.load(stack.home), ctl.common.PING.at("router"), ctl.Nothing())
    runners: dict[str, Any] = pong.stats["runners"]
    return runners


async def ask_in(stack: Stack, chat: str, text: str = "hello") -> str:
    """A message from a new terminal chat, answered: the session it went to."""
    async with Terminal(stack, chat) as term:
        return (await term.ask(text, timeout=180)).session_id


async def runners_of(stack: Stack) -> dict[str, str]:
    """session -> the runner router.db records for it."""
    rows = await control.ask(config.load(stack.home), router_api.SESSIONS_LIST, router_api.GroupFilter())
    return {r.id: r.runner for r in rows}


@pytest.mark.docker
@pytest.mark.nats
@pytest.mark.process
async def test_a_pinned_groups_sessions_stay_on_its_runner_and_new_ones_go_where_slots_are_free(
    two_runners: tuple[Stack, SecondRunner],
) -> None:
    stack, second = two_runners

    async def both_heard() -> bool:
        return {"a", "b"} <= set(await heard(stack))

    await eventually(both_heard, 60, lambda: second.log.read_text())

    # Pinned to b, the runner that is not the install's own: every new session goes there, busier each time.
    await asyncio.to_thread(clawden, stack, "groups", "update", "main", "--runner", "b")
    listed = json.loads(await asyncio.to_thread(clawden, stack, "groups", "list", "--json"))
    assert [(g["name"], g["runner"]) for g in listed] == [("main", "b")]
    pinned = [await ask_in(stack, f"pinned-{n}") for n in range(2)]
    assert installs_of(set(pinned)) == dict.fromkeys(pinned, second.install_id)

    # Unpinned: once the router has heard b running both, a has the free slots, and takes the next two.
    await asyncio.to_thread(clawden, stack, "groups", "update", "main", "--runner", "")

    async def b_busy() -> bool:
        runners = await heard(stack)
        return runners["b"]["running"] == 2 and runners["a"]["running"] == 0

    await eventually(b_busy, 60, "the router never heard b running both pinned sessions")
    spread = [await ask_in(stack, f"free-{n}") for n in range(2)]
    assert installs_of(set(spread)) == dict.fromkeys(spread, stack.install_id)

    # An existing session keeps its runner, though a has more room now.
    assert await ask_in(stack, "pinned-0", "again") == pinned[0]
    recorded = await runners_of(stack)
    assert {s: recorded[s] for s in pinned + spread} == {pinned[0]: "b", pinned[1]: "b", spread[0]: "a", spread[1]: "a"}

    # `clawden status` shows each runner with its own sessions.
    report = await gather(config.load(stack.home))
    by_runner = {r["runner"]: {c["session_id"] for c in r["running"]} for r in report["containers"]["runners"]}
    assert by_runner == {"a": set(spread), "b": set(pinned)}, report["containers"]
    text = render(report)
    assert "containers (runner a): 2 of 8 running" in text and "containers (runner b): 2 of 8 running" in text


def start_runner(home: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "runner"],
            env=dict(os.environ, CLAWDEN_HOME=str(home)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.docker
@pytest.mark.nats
@pytest.mark.process
async def test_a_runner_names_in_its_heartbeat_the_groups_whose_mounts_its_host_has(
    tmp_path: Path, nats_server: NatsServer, docker_client: docker.DockerClient
) -> None:
    here = tmp_path / "papers"
    here.mkdir()
    home = tmp_path / "host-m"
    setup.init(home)
    (home / "config.toml").write_text(
        f'install_id = "t{secrets.token_hex(4)}"\n[nats]\nurl = "{nats_server.url}"\n[runner]\nid = "m"\n'
        f'[groups.papers]\nmounts = [{{host = "{here}", name = "papers"}}]\n'
        f'[groups.elsewhere]\nmounts = [{{host = "{here}", name = "a"}}, {{host = "{tmp_path}/absent", name = "b"}}]\n'
        '[groups.plain]\nmemory = "1g"\n'
    )
    nc = await connect(nats_server.url, "test-heartbeats")
    got: asyncio.Queue[ev.RunnerHeartbeat] = asyncio.Queue()

    async def on(msg: Msg) -> None:
        await got.put(ev.decoder_for(ev.RunnerHeartbeat).decode(msg.data))

    await nc.subscribe(subjects.heartbeat("m"), cb=on)
    log = home / "runner.log"
    proc = start_runner(home, log)
    try:
        first = await asyncio.wait_for(got.get(), 60)
        assert first.mount_groups == ("papers",), log.read_text()  # all of a group's mounts, or it is not named
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        await nc.close()
