"""Three real nats-server processes from `clawden cluster init` (TLS on, as between hosts): the install's
identities work on them, streams are R3, and a killed node loses no stored message."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from clawden import config, control
from clawden.bus import bind, consume, ensure_streams, publish, streams, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from tests.cluster.nodes import Cluster
from tests.eventually import eventually

pytestmark = pytest.mark.nats


def refused_in(errors: list[str]) -> bool:
    return any("permissions violation" in e for e in errors)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "home", tls=True).start()
    yield c
    c.stop()


def message(i: int) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel="telegram", chat_id="c1"),
        message_id=str(i),
        sender=ev.Sender(id="u1", name="Ada"),
        text=f"message {i}",
        sent_at=0.0,
    )


async def publish_until_stored(js: JetStreamContext, event: ev.InboundMessage, within: float = 30) -> None:
    """As a bridge does: retry with the same natural key until JetStream acknowledges (a node may be down)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await publish(js, subjects.inbound("telegram"), event, msg_id=event.key, timeout=2)
            return
        except (NatsTimeout, NoStreamResponseError, APIError, TimeoutError):
            assert time.monotonic() < deadline, f"message {event.message_id} was never stored"
            await asyncio.sleep(0.1)  # a new stream leader is being elected; nothing to wait on but time


async def test_the_router_identity_makes_r3_streams_over_tls(nodes: Cluster) -> None:
    nc = await nodes.connect("router")
    try:
        await nodes.make_streams(nc)
        js = nc.jetstream()
        info = await js.stream_info("CLAWDEN_INBOUND")
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        assert nc.connected_url is not None and nc.connected_url.scheme == "tls"
        # A client that does not know the count (`clawden chat`) keeps it: it never shrinks the streams.
        await ensure_streams(js)
        assert (await js.stream_info("CLAWDEN_INBOUND")).config.num_replicas == 3
    finally:
        await nc.close()


async def test_streams_made_with_one_copy_grow_to_three_when_the_config_says_so(nodes: Cluster) -> None:
    nc = await nodes.connect("router")
    try:
        await nodes.make_streams(nc, replicas=1)  # as a client that does not know the count would
        js = nc.jetstream()
        assert (await js.stream_info("CLAWDEN_WAKE")).config.num_replicas == 1
        await ensure_streams(js, replicas=3)  # what a service does with nats.replicas = 3
        assert (await js.stream_info("CLAWDEN_WAKE")).config.num_replicas == 3

        async def three_copies() -> bool:  # the two new copies catch up, then a leader is elected
            cluster = (await js.stream_info("CLAWDEN_WAKE")).cluster
            peers = cluster.replicas or [] if cluster else []
            return bool(cluster and cluster.leader and len(peers) == 2 and all(p.current for p in peers))

        await eventually(three_copies, 30, "the stream never had three copies")
    finally:
        await nc.close()


async def test_a_bridge_identity_is_held_to_its_own_subjects_on_every_node(nodes: Cluster) -> None:
    core = await nodes.connect("router")
    await nodes.make_streams(core)
    refused: list[int] = []
    for i in range(3):
        errors: list[str] = []

        async def on_error(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc).lower())

        nc = await nodes.connect("channel-telegram", only=i, error_cb=on_error)
        try:
            await nc.publish(subjects.inbound("slack"), b"{}")  # another bridge's subject
            await nc.flush()
            await eventually(partial(refused_in, errors), 5)
            refused.append(i)
        finally:
            await nc.close()
    assert refused == [0, 1, 2]
    await core.close()


async def test_a_killed_node_loses_no_message_and_stores_none_twice(nodes: Cluster) -> None:
    router = await nodes.connect("router")
    await nodes.make_streams(router)
    bridge = await nodes.connect("channel-telegram")
    js = bridge.jetstream()
    got: list[str] = []
    stopping = asyncio.Event()

    async def handle(event: ev.InboundMessage, _msg: Msg) -> None:
        got.append(event.message_id)

    puller = await bind(router.jetstream(), streams.router_inbound())
    reading = asyncio.create_task(consume(puller, ev.InboundMessage, handle, stopping=stopping))
    try:
        for i in range(100):
            await publish_until_stored(js, message(i))
        # The stream's leader: its followers must elect another while messages keep coming.
        leader = (await js.stream_info("CLAWDEN_INBOUND")).cluster.leader  # type: ignore[union-attr]
        nodes.kill(next(n for n, node in enumerate(nodes.nodes) if (leader or "").endswith(node.name)))
        for i in range(100, 200):
            # Twice each: a publisher's retry after a lost ack must not store a second copy.
            await publish_until_stored(js, message(i))
            await publish_until_stored(js, message(i))
        await eventually(lambda: len(set(got)) >= 200, 60, lambda: f"{len(set(got))} of 200 read")
        assert sorted(set(got), key=int) == [str(i) for i in range(200)]
        assert (await js.stream_info("CLAWDEN_INBOUND")).state.messages == 200
    finally:
        stopping.set()
        await reading
        await bridge.close()
        await router.close()


async def test_a_service_waits_for_a_cluster_without_a_leader_and_makes_its_streams_once_there_is_one(
    tmp_path: Path,
) -> None:
    """One node of three has no majority, so no JetStream meta leader and no answer from the API: what a service
    meets when it starts before its peers. It waits, saying so, and makes the R3 streams once they come."""
    nodes = Cluster(tmp_path / "home").start(0)
    notes: list[str] = []

    class Notes:
        def status(self, text: str) -> None:
            notes.append(text)

    nc = await nodes.connect("router", only=0)
    try:
        making = asyncio.create_task(ensure_streams(nc.jetstream(), replicas=3, notifier=Notes()))
        await eventually(lambda: notes, 60, "the service never said it waits for JetStream")
        assert not making.done() and "waiting for JetStream" in notes[0]
        nodes.start(1).start(2)
        await asyncio.wait_for(making, 120)
        assert (await nc.jetstream().stream_info("CLAWDEN_INBOUND")).config.num_replicas == 3
    finally:
        await nc.close()
        nodes.stop()


@pytest.fixture
def tls_router(nodes: Cluster) -> Iterator[subprocess.Popen[bytes]]:
    """`clawden run router`, as its unit runs it, with the cluster's `[nats]` lines in config.toml."""
    toml = nodes.home / "config.toml"
    toml.write_text(toml.read_text().replace('url = ""\n', nodes.nats_settings, 1))
    env = dict(os.environ, CLAWDEN_HOME=str(nodes.home))
    env.pop("CLAWDEN_NATS_URL", None)
    with (nodes.home / "router.log").open("wb") as log:
        router = subprocess.Popen([sys.executable, "-m", "clawden", "run", "router"], env=env, stdout=log, stderr=log)
    yield router
    router.terminate()
    assert router.wait(30) == 0, (nodes.home / "router.log").read_text()


@pytest.mark.process
async def test_a_service_and_the_cli_reach_the_cluster_over_tls_from_the_config(
    nodes: Cluster, tls_router: subprocess.Popen[bytes]
) -> None:
    cfg = config.load(nodes.home)
    assert cfg.nats.replicas == 3 and cfg.nats.ca_file and cfg.nats_url.startswith("tls://")
    pong = await control.ask(cfg, PING.at("router"), Nothing(), timeout=60)  # the CLI's connection, over TLS
    assert pong.service == "router" and pong.pid == tls_router.pid
    nc = await nodes.connect()
    try:
        assert (await nc.jetstream().stream_info("CLAWDEN_INBOUND")).config.num_replicas == 3  # the router made it
    finally:
        await nc.close()
