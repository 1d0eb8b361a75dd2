"""A new agent group's starter CLAUDE.md reaches the runner that runs it: two runner processes on two "hosts" with
no shared storage (separate homes, so separate groups folders), one NATS, one Docker engine, real containers and
Claude Code answering through the fake model. The owner's agent on runner a asks for a new agent (create_agent),
runner a writes its CLAUDE.md in a's groups folder, and the new group's session is placed on runner b: b writes
the starter memory the router sent with the group's settings into its own folder, and the new agent answers with
it in what Claude Code sends the model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from clawden import config, control
from clawden.agentcontainer import container_user
from clawden.bus import ctl
from clawden.bus.ctl import router as router_api
from services.runner.containers import LABEL_SESSION
from tests.cluster.test_runners import SecondRunner, installs_of
from tests.conftest import NatsServer
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.e2e.test_credential_approval import OWNER, button, card_for, click
from tests.eventually import eventually
from tests.newagent.test_e2e import MARKER, brain, host_notes

pytestmark = [pytest.mark.docker, pytest.mark.nats, pytest.mark.process]


@pytest.fixture
def two_hosts(
    tmp_path: Path, nats_server: NatsServer, docker_client: docker.DockerClient, agent_image: str
) -> Iterator[tuple[Stack, SecondRunner]]:
    """Runner a (the install's own, home host-a) and runner b (home host-b): no `storage` shared between them."""
    stack = start_stack(tmp_path / "host-a", nats=f'url = "{nats_server.url}"', runner='id = "a"')
    second = SecondRunner(tmp_path / "host-b", nats_server.url)
    stack.fake.responder = brain
    yield stack, second
    second.close()
    stack.stop()


async def pin(stack: Stack, group: str, runner: str) -> None:
    update = router_api.GroupUpdate(name=group, runner=runner)
    await control.ask(config.load(stack.home), router_api.GROUPS_UPDATE, update)


async def test_a_new_agent_placed_on_another_host_starts_with_the_memory_it_was_made_with(
    two_hosts: tuple[Stack, SecondRunner],
) -> None:
    stack, second = two_hosts
    cfg = config.load(stack.home)

    async def both_heard() -> bool:
        pong = await control.ask(cfg, ctl.common.PING.at("router"), ctl.Nothing())
        return {"a", "b"} <= set(pong.stats["runners"])

    await eventually(both_heard, 60, lambda: second.log.read_text())
    await pin(stack, "main", "a")  # the asking agent, and so the first write of the new CLAUDE.md, on host a

    async with Terminal(stack, "terminal") as owner:
        await owner.send("please make a poet")
        card = await card_for(owner, timeout=180)
        await click(owner, card, button(card, approve=True), OWNER)
        await eventually(lambda: [t for t in host_notes(stack, "main") if "'poet' was created" in t], timeout=60)
    host_a, host_b = stack.home / "groups" / "poet", second.home / "groups" / "poet"
    assert (host_a / "CLAUDE.md").read_text() == MARKER
    assert not (host_b / "CLAUDE.md").exists()

    await pin(stack, "poet", "b")  # its sessions go to the runner that did not write it
    async with Terminal(stack, "poet-chat") as chat:
        answer = await chat.ask("hello poet", timeout=180)
    assert (answer.agent_group, answer.text) == ("poet", "poet here, with my memory")
    assert installs_of({answer.session_id}) == {answer.session_id: second.install_id}
    assert (host_b / "CLAUDE.md").read_text() == MARKER
    _, uid = container_user()
    assert uid is None or os.stat(host_b / "CLAUDE.md").st_uid == uid  # the agent may edit its memory

    # The owner deletes the group's memory on host b: the next container there starts without it, not with the
    # starter written again (b writes a starter once).
    (host_b / "CLAUDE.md").unlink()
    client = docker.from_env()
    try:
        for container in client.containers.list(filters={"label": f"{LABEL_SESSION}={answer.session_id}"}):
            container.kill()
    finally:
        client.close()
    await eventually(lambda: not installs_of({answer.session_id}), 60)
    async with Terminal(stack, "poet-chat") as chat:
        again = await chat.ask("hello poet", timeout=180)
    assert again.agent_group == "poet"  # (its answer still quotes the memory: the conversation held it)
    assert installs_of({again.session_id}) == {again.session_id: second.install_id}  # a new container, on b
    assert not (host_b / "CLAUDE.md").exists()
