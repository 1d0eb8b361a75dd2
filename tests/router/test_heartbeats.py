"""The router process hears runners' heartbeats on real NATS and places new sessions by them: a malformed
beat, or one that claims another runner than its subject names, is dropped; a live runner gets the next new
session, and a session made before stays where it was."""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from clawden.bus import ctl, subjects
from clawden.bus import events as ev
from services.runner import heartbeat
from tests.eventually import eventually
from tests.router.conftest import RouterProcess, collect
from tests.router.test_service import chat_message, send


async def heard(router: RouterProcess) -> dict[str, Any]:
    """What the router last heard from each runner (its ping's stats)."""
    pong = await router.ask(ctl.common.PING.at("router"), ctl.Nothing())
    runners: dict[str, Any] = pong.stats["runners"]
    return runners


def beat(rid: str) -> ev.RunnerHeartbeat:
    return heartbeat.beat(rid, at=0, slots=8, running=0, queued=0, cpus=2, load=0.1, memory=1 << 30)


async def test_new_sessions_go_to_the_runner_the_router_hears_and_forged_beats_are_dropped(
    router: RouterProcess, nc: Client, js: JetStreamContext
) -> None:
    # Before any beat: the router's own runner id (`local`), at once.
    await send(js, chat_message(1, chat="before", channel="local", sender="local:someone"))
    [first] = await collect(js, "t-local", subjects.wake("local"), want=1)
    assert isinstance(first, ev.Wake)

    await nc.publish(subjects.heartbeat("a"), b'{"type":"runner.heartbeat","runner":"a"}')  # malformed
    forged = msgspec.json.encode({**msgspec.to_builtins(beat("b")), "type": "runner.heartbeat"})
    await nc.publish(subjects.heartbeat("a"), forged)  # runner a speaking as b
    await nc.publish(subjects.heartbeat("a"), ev.encode(beat("a")))  # one subscription: heard in this order

    async def heard_a() -> bool:
        return "a" in await heard(router)

    await eventually(heard_a, 30, router.output)
    assert set(await heard(router)) == {"a"}  # never b
    assert (await router.stats())["poisoned"] == 2

    await send(js, chat_message(2, chat="after", channel="local", sender="local:someone"))
    [placed] = await collect(js, "t-a", subjects.wake("a"), want=1)
    assert isinstance(placed, ev.Wake) and placed.route.chat_id == "after"
    await send(js, chat_message(3, chat="before", channel="local", sender="local:someone"))
    [again] = await collect(js, "t-local", subjects.wake("local"), want=1)  # an existing session keeps its runner
    assert isinstance(again, ev.Wake) and again.session_id == first.session_id
