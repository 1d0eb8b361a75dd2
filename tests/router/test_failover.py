"""A runner declared gone, with shared storage, on real NATS: what it had not taken is read past its durable's ack
floor, and the router process moves its sessions to a live runner, an `Adopt` first, then those wakes again with
the new epoch; the session's next message goes to the new runner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from clawden import natsserver
from clawden.bus import bind, ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.streams import runner_wake
from services.router.failover import untaken_wakes
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.router.conftest import RouterProcess, collect, running_router
from tests.router.test_heartbeats import beat, heard
from tests.router.test_service import chat_message, send

pytestmark = [pytest.mark.nats]


def wake(session: str, n: int) -> ev.Wake:
    return ev.Wake(
        session_id=session,
        agent_group="main",
        route=ev.Route(channel="local", chat_id=session),
        message=ev.WakeMessage(id=f"m{n}", kind="chat", text=f"message {n}"),
        epoch=1,
    )


async def test_what_a_runner_had_not_acked_is_read_past_its_durables_ack_floor(js: JetStreamContext) -> None:
    await ensure_streams(js)
    sent = [wake("s-1", 1), wake("s-2", 2), wake("s-1", 3), wake("s-2", 4)]
    await publish(js, subjects.wake("b"), wake("s-9", 9), msg_id="other")  # another runner's: never read
    for w in sent:
        await publish(js, subjects.wake("a"), w, msg_id=w.key)
    # no durable yet: runner a took none of them
    assert await untaken_wakes(js, "a") == {"s-1": [sent[0], sent[2]], "s-2": [sent[1], sent[3]]}
    puller = await bind(js, runner_wake("a"), batch=2)
    try:
        first, second = await puller.next(timeout=5)
        await first.ack_sync()
        await second.ack_sync()
    finally:
        await puller.stop()
    assert await untaken_wakes(js, "a") == {"s-1": [sent[2]], "s-2": [sent[3]]}


@pytest.fixture
async def sharing_router(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[RouterProcess]:
    """A router whose install says its runners share storage, declaring a runner gone after 2 s of silence."""
    async with running_router(
        tmp_path / "home", nats_server.url, 'id = "a"\ndead_after = 2.0\nshared_storage = true'
    ) as r:
        yield r


async def test_the_router_moves_a_silent_runners_sessions_to_a_live_one_with_what_it_had_not_taken(
    sharing_router: RouterProcess, nc: Client, js: JetStreamContext
) -> None:
    await nc.publish(subjects.heartbeat("a"), ev.encode(beat("a")))
    await nc.flush()
    await send(js, chat_message(1, chat="c1", channel="local", sender="local:someone"))
    [first] = await collect(js, "t-a", subjects.wake("a"), want=1)
    assert isinstance(first, ev.Wake) and first.epoch == 1  # nobody took it from runner a's own durable

    async def b_beats() -> None:  # a is silent from now on; b lives
        while True:
            await nc.publish(subjects.heartbeat("b"), ev.encode(beat("b")))
            await asyncio.sleep(0.3)

    beating = asyncio.create_task(b_beats())
    try:
        moved = await collect(js, "t-b", subjects.wake("b"), want=2)
        adopt, again = moved
        assert isinstance(adopt, ev.Adopt) and (adopt.session_id, adopt.epoch, adopt.from_runner) == (
            first.session_id,
            2,
            "a",
        )
        assert adopt.route == first.route and adopt.group == first.group
        assert isinstance(again, ev.Wake) and again.key == first.key and again.epoch == 2
        assert again.message == first.message
        stats = await sharing_router.stats()
        assert (stats["sessions_moved"], stats["wakes_resent"]) == (1, 1)

        await send(js, chat_message(2, chat="c1", channel="local", sender="local:someone"))
        [next_one] = await collect(js, "t-b", subjects.wake("b"), want=1)
        assert isinstance(next_one, ev.Wake) and (next_one.session_id, next_one.epoch) == (first.session_id, 2)

        async def recorded() -> ev.Event | None:
            msg = await js.get_msg("CLAWDEN_PLACEMENT", subject=subjects.placement(first.session_id))
            placed = ev.decode(msg.data or b"")
            return placed if isinstance(placed, ev.SessionPlaced) and placed.runner == "b" else None

        placed = await eventually(recorded, 30, sharing_router.output)
        assert isinstance(placed, ev.SessionPlaced) and placed.epoch == 2
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def beating(
    nc: Client, runner: str, every: float = 0.3, beaten: asyncio.Event | None = None, load: float | None = None
) -> None:
    hb = beat(runner) if load is None else msgspec.structs.replace(beat(runner), load=load)
    while True:
        await nc.publish(subjects.heartbeat(runner), ev.encode(hb))
        if beaten is not None:
            beaten.set()
        await asyncio.sleep(every)


async def test_a_runner_is_not_declared_gone_for_the_time_the_router_was_cut_off_from_nats(
    tmp_path: Path, nats_server: NatsServer, nc: Client, js: JetStreamContext
) -> None:
    dead_after = 5.0
    config = f'id = "a"\ndead_after = {dead_after}\nshared_storage = true'
    async with running_router(tmp_path / "home", nats_server.url, config) as router:
        await nc.publish(subjects.heartbeat("a"), ev.encode(beat("a")))
        await nc.flush()
        await send(js, chat_message(1, chat="c1", channel="local", sender="local:someone"))
        [first] = await collect(js, "t-a", subjects.wake("a"), want=1)
        assert isinstance(first, ev.Wake)

        nats_server.stop()  # the router hears nothing, for longer than dead_after
        await asyncio.sleep(dead_after + 2)
        nats_server.proc = natsserver.start(nats_server.port, nats_server.store)
        await eventually(lambda: nc.is_connected, 30, "the test's client never came back")
        tasks = [asyncio.create_task(beating(nc, "b"))]  # b's beats reach the router first; a's are on their way

        async def b_heard() -> bool:
            return "b" in await heard(router)

        try:
            await eventually(b_heard, 30, router.output)
            await asyncio.sleep(dead_after / 3 + 0.5)  # a failover look with b live, a silent since before the outage
            tasks.append(asyncio.create_task(beating(nc, "a")))
            await asyncio.sleep(dead_after + 1)  # both beat on: a is live, and nothing moves
            assert (await router.stats()).get("sessions_moved", 0) == 0, router.output()
            assert await collect(js, "t-b", subjects.wake("b"), want=0) == []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_runner_is_not_declared_gone_while_the_server_is_frozen_and_the_router_still_looks_connected(
    tmp_path: Path, nats_server: NatsServer, nc: Client, js: JetStreamContext
) -> None:
    # The router's link stays "connected" while the server is stopped (SIGSTOP): nothing flows, and nats-py would
    # notice only with its own ping, minutes later. a and b beat on; their beats wait in the server's sockets.
    dead_after = 3.0
    config = f'id = "a"\ndead_after = {dead_after}\nshared_storage = true'
    async with running_router(tmp_path / "home", nats_server.url, config) as router:
        await nc.publish(subjects.heartbeat("a"), ev.encode(beat("a")))
        await nc.flush()
        await send(js, chat_message(1, chat="c1", channel="local", sender="local:someone"))
        [first] = await collect(js, "t-a", subjects.wake("a"), want=1)
        assert isinstance(first, ev.Wake)

        a_beat = asyncio.Event()
        tasks = [
            asyncio.create_task(beating(nc, "b", every=0.2, load=0.0)),  # idler than a: a moved session goes there
            asyncio.create_task(beating(nc, "a", every=1.5, beaten=a_beat)),  # live: half of dead_after apart
        ]

        async def b_heard() -> bool:
            return "b" in await heard(router)

        try:
            await eventually(b_heard, 30, router.output)
            a_beat.clear()
            await a_beat.wait()
            await nc.flush()  # a's beat is in, and on its way to the router
            # Frozen just before a's next beat: a's silence passes dead_after 1.8 s into the freeze, b's only at
            # 3.2 s, so a router that counts the freeze as heard finds a gone and b live in between.
            await asyncio.sleep(1.2)
            os.kill(nats_server.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(dead_after + 1)
            finally:
                os.kill(nats_server.proc.pid, signal.SIGCONT)

            checks = (await router.stats()).get("failover_checks", 0)

            async def judged_twice_since() -> dict[str, Any] | None:
                # Two failover rounds that judged since the server is back: the second began after the first had
                # moved whatever it judged gone, and both judged on what came out of the freeze.
                stats = await router.stats()
                done = stats.get("sessions_moved", 0) or stats.get("failover_checks", 0) >= checks + 2
                return stats if done else None

            stats = await eventually(judged_twice_since, 60, router.output)
            assert stats.get("sessions_moved", 0) == 0, router.output()
            assert await collect(js, "t-b", subjects.wake("b"), want=0) == []
            assert "a" in await heard(router)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
