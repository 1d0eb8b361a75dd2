"""The bridge process keeps its listener alive: a deaf one is reconnected, a crashed one restarted; and while the
listener cannot reach its platform, the service says so (ping's `trouble`) until it hears from it again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client

from services.channels.bridge import BridgeStats, Inbound
from services.channels.reach import WAITING, Reach
from services.channels.service import _listen_forever
from services.channels.state import BridgeState
from tests.channels.memory_bridge import MemoryBridge
from tests.eventually import eventually


class Scripted(MemoryBridge):
    """A listener that behaves as told on each start: "deaf", "crash", "healthy", "polling" (hears from the
    platform, then waits), or "outage" (every call fails, until `up` is set; healthy after)."""

    def __init__(self, *script: str) -> None:
        super().__init__()
        self.script = list(script)
        self.starts = 0
        self.reconnects = 0
        self.deaf_after = 0.3
        self.started = asyncio.Event()
        self.lives = 0  # signs of life a healthy listener gave, each 0.05 s apart
        self.up = asyncio.Event()  # the platform answers again (the "outage" behaviour)

    async def listen(self, inbound: Inbound) -> None:
        behaviour = self.script[min(self.starts, len(self.script) - 1)]
        self.starts += 1
        self.started.set()
        if behaviour == "crash":
            raise RuntimeError("the platform library blew up")
        if behaviour == "outage":
            while not self.up.is_set():
                await inbound.pause(0.05)  # as every bridge does after a call that failed
            behaviour = "healthy"
        while True:
            if behaviour in ("healthy", "polling"):
                inbound.alive()
                self.lives += 1
            if behaviour == "polling":
                await inbound.pause(0.05)  # an album's wait, a poll interval: after hearing from the platform
            else:
                await asyncio.sleep(0.05)

    async def reconnect(self) -> None:
        self.reconnects += 1


async def run_until(
    bridge: Scripted, nc: Client, tmp_path: Path, done: Callable[[], bool], reach: Reach | None = None
) -> BridgeStats:
    """Keep the bridge's listener going until `done` holds, then stop it as the process does."""
    state = await BridgeState.open(tmp_path / "state.db")
    stats = BridgeStats()
    stopping = asyncio.Event()
    inbound = Inbound(nc.jetstream(), "memory", state, tmp_path / "files", stats, reach=reach)
    task = asyncio.create_task(_listen_forever(bridge, inbound, stopping, stats))
    await eventually(done, timeout=30)
    stopping.set()
    await asyncio.wait_for(task, 5)
    await state.close()
    return stats


async def test_a_listener_that_goes_deaf_is_reconnected_and_started_again(nc: Client, tmp_path: Path) -> None:
    bridge = Scripted("deaf", "healthy")
    stats = await run_until(bridge, nc, tmp_path, lambda: bridge.lives > 0)
    assert (bridge.starts, bridge.reconnects, stats.reconnects) == (2, 1, 1)


async def test_a_listener_that_crashes_is_started_again(nc: Client, tmp_path: Path) -> None:
    bridge = Scripted("crash", "healthy")
    stats = await run_until(bridge, nc, tmp_path, lambda: bridge.lives > 0)  # after the 2 s restart backoff
    assert (bridge.starts, stats.listener_errors, bridge.reconnects) == (2, 1, 0)


async def test_a_listener_that_shows_life_is_left_alone(nc: Client, tmp_path: Path) -> None:
    bridge = Scripted("healthy")
    # Alive for more than three times as long as deafness takes, counted in its own signs of life.
    stats = await run_until(bridge, nc, tmp_path, lambda: bridge.lives * 0.05 > 3 * bridge.deaf_after)
    assert (bridge.starts, stats.reconnects, stats.listener_errors) == (1, 0, 0)


async def test_a_listener_that_cannot_reach_its_platform_is_said_to_until_it_hears_from_it(
    nc: Client, tmp_path: Path
) -> None:
    bridge = Scripted("outage")
    said: list[str] = []

    def recovered() -> bool:
        if said and not bridge.up.is_set():
            bridge.up.set()  # the platform answers once the service said it did not
        return bridge.lives > 0

    await run_until(bridge, nc, tmp_path, recovered, Reach("Memory", said.append))

    assert said[0].startswith("cannot reach Memory since ") and said[0].endswith(WAITING)
    assert said[-1] == "" and said.count("") == 1 and bridge.starts == 1


async def test_a_listener_that_waits_after_hearing_from_its_platform_has_no_trouble(nc: Client, tmp_path: Path) -> None:
    bridge = Scripted("polling")
    said: list[str] = []
    await run_until(bridge, nc, tmp_path, lambda: bridge.lives > 10, Reach("Memory", said.append))
    assert said == []


async def test_a_listener_that_crashes_cannot_hear_its_platform_until_it_runs_again(nc: Client, tmp_path: Path) -> None:
    bridge = Scripted("crash", "healthy")
    said: list[str] = []
    await run_until(bridge, nc, tmp_path, lambda: bridge.lives > 0, Reach("Memory", said.append))
    [trouble, over] = said
    assert trouble.startswith("cannot hear Memory since ")
    assert "(its listener failed: RuntimeError: the platform library blew up)" in trouble and over == ""
