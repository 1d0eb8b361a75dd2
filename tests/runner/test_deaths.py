"""A container's death is handled however the runner learns of it, on a real Docker engine: a death no event told (it
came before the start returned the container's id, after the adoption listed it, or while the event stream was down)
is found, and the session gives back its slot and runs again, instead of holding both until the runner restarts."""

from __future__ import annotations

import asyncio
import secrets
import threading
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import docker
import pytest
import requests
from docker.errors import ImageNotFound
from docker.models.containers import Container

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.runner.containers import LABEL_INSTALL, LABEL_SESSION, ContainerSpec, Died, Docker
from services.runner.service import Live, Runner, Waiting
from services.runner.sessions import SessionIndex, SessionInfo, prepare_folder
from services.runner.vaultroute import VaultRoute, socket_route
from tests.eventually import eventually

MINE = SessionInfo("s-1", "main", ev.Route(channel="local", chat_id="kitchen"))
IMAGE = "clawden-base:bookworm"  # any image with a shell: these containers run no agent


@pytest.fixture
def install(docker_client: docker.DockerClient) -> Iterator[str]:
    """An install id of the test's own; its containers are removed afterwards."""
    try:
        docker_client.images.get(IMAGE)
    except ImageNotFound:
        pytest.skip(f"image {IMAGE} is missing; run `clawden image build`")
    install = f"t{secrets.token_hex(4)}"
    yield install
    for container in docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={install}"}):
        container.remove(force=True)


@pytest.fixture
async def runner(install: str, tmp_path: Path) -> AsyncIterator[Runner]:
    index = await SessionIndex.start(tmp_path / "data" / "runner.db")
    await index.run(index.put, MINE)
    ctx = types.SimpleNamespace(
        config=Config(home=str(tmp_path), install_id=install), js=None, nc=None, stopping=asyncio.Event()
    )
    docker = Docker(install)
    runner = Runner(cast(ServiceContext, ctx), docker, index)
    yield runner
    await runner.shutdown()
    docker.close()
    await index.stop()


def waiting_for_an_answer(runner: Runner) -> Path:
    """The session's folder, with a message its agent has not answered."""
    folder = runner.session_dir(MINE)
    prepare_folder(folder, None)
    routing = sessiondb.Routing("local", "kitchen")
    sessiondb.insert_inbound(
        folder, sessiondb.InboundMessage(id="m-1", kind="chat", content={"text": "hi"}, routing=routing)
    )
    return folder


def run(client: docker.DockerClient, install: str, command: str, **kwargs: Any) -> Container:
    labels = {LABEL_INSTALL: install, LABEL_SESSION: MINE.id}
    container: Container = client.containers.run(
        IMAGE, ["sh", "-c", command], labels=labels, network_mode="none", detach=True, **kwargs
    )
    return container


def runs_again(runner: Runner) -> bool:
    """The session gave back its slot and waits for a new container (its message counted a try)."""
    return MINE.id not in runner.live and MINE.id in runner.queue


async def test_a_container_found_dead_when_the_hang_check_stops_it_is_handled_as_its_death(
    runner: Runner, docker_client: docker.DockerClient, install: str
) -> None:
    folder = waiting_for_an_answer(runner)
    container = run(docker_client, install, "exit 3")
    container.wait()  # it died, and no event said so (the stream was down, say)
    runner.live[MINE.id] = Live(MINE, folder, container_id=str(container.id))

    await runner.stop_session(MINE.id, "no heartbeat", hung=True)  # stopping it raises no death of its own

    await eventually(lambda: runs_again(runner), timeout=10, message="the session still holds its slot")
    assert sessiondb.unfinished(folder)[0].tries == 1
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={install}"}) == []


async def test_a_container_that_died_after_the_adoption_listed_it_is_handled(
    runner: Runner, docker_client: docker.DockerClient, install: str
) -> None:
    waiting_for_an_answer(runner)
    container = run(docker_client, install, "sleep 300")
    listed = await runner.docker.ours()  # running, as the restarted runner lists it
    container.kill()
    container.wait()  # then it dies, before the adoption has it in its table: its event finds no session

    async def as_listed() -> list[Container]:
        return listed

    runner.docker.ours = as_listed  # type: ignore[method-assign]
    await runner.adopt()

    await eventually(lambda: runs_again(runner), timeout=10, message="the adopted session still holds its slot")


async def test_a_container_that_died_before_its_start_returned_is_handled(
    runner: Runner, docker_client: docker.DockerClient, install: str, tmp_path: Path
) -> None:
    folder = waiting_for_an_answer(runner)

    async def vault(info: SessionInfo) -> tuple[VaultRoute, Path | None, Path | None]:
        return socket_route(tmp_path / "gateway"), None, None

    async def dies_at_once(spec: ContainerSpec) -> Container:
        def start() -> Container:
            container = run(docker_client, install, "exit 1", name=spec.name)
            container.wait()  # dead before the runner has its id: its event found an id that was not the session's
            return container

        return await asyncio.to_thread(start)

    runner._vault_route = vault  # type: ignore[method-assign]
    runner.docker.start = dies_at_once  # type: ignore[method-assign]
    runner.live[MINE.id] = Live(MINE, folder)  # the dispatcher gave it a slot

    await asyncio.wait_for(runner._launch(Waiting(MINE, folder)), 10)  # not the start gate's 20 s: it is known dead

    await eventually(lambda: runs_again(runner), timeout=10, message="the session still holds its slot")


class CutStream:
    """Docker's event stream, cut once (the daemon restarting) right after `dies` ran: the first stream followed
    ends in a connection error; later ones are the engine's own, as asked, or, where `forgets`, with no `since`, as a
    restarted daemon that replays nothing from before."""

    def __init__(self, client: docker.DockerClient, dies: Any, *, forgets: bool = False) -> None:
        self.events = client.events
        self.dies = dies
        self.forgets = forgets
        self.asked: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.asked.append(kwargs)
        if len(self.asked) == 1:
            return self.cut()
        return self.events(**(kwargs | {"since": None} if self.forgets else kwargs))

    def cut(self) -> Iterator[dict[str, Any]]:
        self.dies()
        raise requests.exceptions.ConnectionError("the daemon went away")
        yield {}  # a generator, as the stream is


async def test_a_death_while_the_event_stream_was_cut_is_told_once_it_is_followed_again(
    docker_client: docker.DockerClient, install: str
) -> None:
    container = run(docker_client, install, "sleep 300")
    watching = Docker(install)
    watching.client.events = CutStream(docker_client, lambda: (container.kill(), container.wait()))  # type: ignore[method-assign]
    told: list[Died] = []
    came = threading.Event()

    def on_death(died: Died) -> None:
        told.append(died)
        came.set()

    try:
        watching.watch_deaths(on_death)
        assert await asyncio.to_thread(came.wait, 10), "the death while the stream was cut was never told"
    finally:
        watching.close()
    assert told[0] == Died(MINE.id, str(container.id), 137)


async def test_a_death_a_restarted_daemon_forgot_is_found_once_the_stream_is_followed_again(
    runner: Runner, docker_client: docker.DockerClient, install: str
) -> None:
    folder = waiting_for_an_answer(runner)
    container = run(docker_client, install, "sleep 300")
    runner.live[MINE.id] = Live(MINE, folder, container_id=str(container.id))
    cut = CutStream(docker_client, lambda: (container.kill(), container.wait()), forgets=True)
    runner.docker.client.events = cut  # type: ignore[method-assign]

    runner.docker.watch_deaths(runner.on_death, runner.on_events_followed)

    await eventually(lambda: runs_again(runner), timeout=10, message="the session still holds its slot")
