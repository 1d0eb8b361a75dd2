"""A whole Clawden (`clawden up`: router, runner with real containers and the fake model, every service)
on a three-node cluster with R3 streams: one node killed while chats talk, and every message still gets
exactly its own reply. bench/cluster.py runs the same with 20 chats and 200 messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.cluster import failover
from tests.cluster.nodes import Cluster
from tests.e2e.harness import Stack, start_stack

pytestmark = [pytest.mark.docker, pytest.mark.nats]


@pytest.fixture
def cluster_stack(
    tmp_path: Path, docker_client: docker.DockerClient, agent_image: str
) -> Iterator[tuple[Stack, Cluster]]:
    nodes = Cluster(tmp_path / "home").start()
    try:
        stack = start_stack(tmp_path / "home", nats=nodes.nats_settings, runner="max_containers = 4")
    except BaseException:
        nodes.stop()
        raise
    yield stack, nodes
    stack.stop()
    nodes.stop()


async def test_a_killed_nats_node_loses_no_reply_and_sends_none_twice(cluster_stack: tuple[Stack, Cluster]) -> None:
    stack, nodes = cluster_stack
    nc = await stack.connect()
    assert (await nc.jetstream().stream_info("CLAWDEN_WAKE")).config.num_replicas == 3  # the services made them R3
    await nc.close()

    figures, chats = await failover.run(stack, nodes, chats=4, messages=6)

    assert figures == {"lost": 0, "duplicated": 0, "misrouted": 0}, [(c.sent, c.replies) for c in chats]
    assert sum(len(c.sent) for c in chats) == 24
