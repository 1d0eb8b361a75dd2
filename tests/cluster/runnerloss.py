"""Chats talking to a Clawden with two runners on shared storage while one runner is lost (SIGKILL), or stopped
past `dead_after` and let go on (SIGSTOP, then SIGCONT): the count of what was lost, duplicated or misrouted, and
how long the lost runner's chats waited. Shared by tests/cluster/test_runner_loss.py and bench/cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clawden import config, control, natsauth, setup
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import router as router_api
from clawden.bus.ctl.common import PING
from clawden.cli.main import main as cli_main
from tests.chaos import chaos
from tests.cluster.nodes import Cluster
from tests.cluster.test_runners import SecondRunner
from tests.e2e.harness import Stack, start_stack
from tests.eventually import eventually

DEAD_AFTER = 3.0  # seconds: the runners beat every second, the router looks every second
A = "local"  # runner a's id: the install's own runner, whose grant the cluster's nodes were written with


@dataclass
class Pair:
    """Runner a (the install's own, id `local`, under `clawden up`) and runner b (another "host"), on one cluster,
    both with their session, group and agent-state folders on `storage`."""

    stack: Stack
    b: SecondRunner
    nodes: Cluster
    storage: Path

    async def router_hears_both(self) -> bool:
        """Whether the router has heard both runners beat (so it places sessions on both)."""
        pong = await control.ask(config.load(self.stack.home), PING.at("router"), Nothing())
        return {A, "b"} <= set(pong.stats.get("runners", {}))

    async def runners_of(self, chats: list[str]) -> dict[str, str]:
        """chat -> the runner its session is on now, as the router says."""
        sessions = await control.ask(
            config.load(self.stack.home), router_api.SESSIONS_LIST, router_api.GroupFilter(limit=1000)
        )
        return {s.chat_id: s.runner for s in sessions if s.chat_id in chats}


@contextlib.contextmanager
def pair(tmp: Path, max_containers: int = 4) -> Iterator[Pair]:
    home, storage = tmp / "host-a", tmp / "shared"
    setup.init(home)
    assert cli_main(["--home", str(home), "runners", "add", "b"]) == 0
    # What lives on the shared storage: the groups' folders (main's memory) the owner put there.
    shutil.copytree(home / "groups", storage / "groups")
    sharing = (
        f'shared_storage = true\nstorage = "{storage}"\ndead_after = {DEAD_AFTER}\nmax_containers = {max_containers}'
    )
    nodes = Cluster(home).start()
    stack = b = None
    try:
        stack = start_stack(home, nats=nodes.nats_settings, runner=sharing)
        seed = natsauth.seed_path(config.load(home), "runner-b")
        b = SecondRunner(tmp / "host-b", "", seed, nats=nodes.nats_settings, runner=sharing)
        p = Pair(stack, b, nodes, storage)
        asyncio.run(eventually(p.router_hears_both, 120, lambda: b.log.read_text()[-3000:]))
        yield p
    finally:
        if b is not None:
            b.close()
        if stack is not None:
            stack.stop()
        nodes.stop()


@dataclass
class Loss:
    figures: dict[str, int]
    chats: list[chaos.Chat]
    on_b: list[str]  # the chats whose sessions were on b when it was lost
    waits: list[float] = field(default_factory=list)  # for each: seconds from the loss to its next reply
    moved: dict[str, str] = field(default_factory=dict)  # chat -> runner once it was over


async def lose_b(
    p: Pair,
    how: Literal["kill", "stop"],
    *,
    chats: int,
    messages: int,
    reply_timeout: float = 180,
    log: Callable[[str], None] = lambda _: None,
) -> Loss:
    """`chats` chats send at least `messages` each, one at a time; once every chat has had a reply and runner b
    holds some sessions, b is SIGKILLed (`kill`), or SIGSTOPped until the router has moved its sessions to a and
    then SIGCONTed (`stop`). The chats talk on until each of b's has been answered after the loss."""
    talking = [chaos.Chat(f"shared-{i}") for i in range(chats)]
    by_name = {c.name: c for c in talking}
    names = list(by_name)
    over = asyncio.Event()
    traffic = asyncio.gather(*(chaos.talk(p.stack, c, messages, reply_timeout, over) for c in talking))
    try:
        await eventually(lambda: all(c.replies for c in talking) or traffic.done(), reply_timeout)
        where = await p.runners_of(names)
        on_b = sorted(chat for chat, runner in where.items() if runner == "b")
        assert on_b, f"placement put no session on runner b: {where}"
        log(f"{how}: runner b, holding {len(on_b)} of {chats} sessions")
        lost_at = time.monotonic()
        os.kill(p.b.proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        try:

            async def all_moved() -> bool:
                return set((await p.runners_of(on_b)).values()) == {A}

            await eventually(all_moved, reply_timeout, lambda: p.b.log.read_text()[-3000:])
            log(f"moved to runner a after {time.monotonic() - lost_at:.1f} s")
        finally:
            if how == "stop":
                os.kill(p.b.proc.pid, signal.SIGCONT)

        def answered_since() -> bool:
            return all(by_name[chat].replied_at[-1] > lost_at for chat in on_b) or traffic.done()

        await eventually(answered_since, reply_timeout)
        over.set()
        await traffic
    finally:
        traffic.cancel()
        with contextlib.suppress(BaseException):
            await traffic
    waits = [next((t - lost_at for t in by_name[chat].replied_at if t > lost_at), float("inf")) for chat in on_b]
    return Loss(chaos.check(talking), talking, on_b, waits, await p.runners_of(names))
