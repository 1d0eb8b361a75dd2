"""A runner among several: its heartbeat and its own control subjects.

Every `EVERY` seconds the runner publishes a `RunnerHeartbeat` at `clawden.runner.heartbeat.<id>` (core NATS,
no stream: only the latest matters): its free container slots, what runs and waits, and the host's CPUs, load
and available memory, so whoever places sessions can pick the least loaded live runner. It also answers its
verbs at `clawden.ctl.runner.<id>.<verb>` beside the shared queue-group subject, so `clawden status` and the
web dashboard can find every runner (micro discovery) and ask each one. `beat` and `mem_available` are pure."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from nats.micro.request import Request

from clawden import natsauth
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import Verb
from clawden.bus.ctl import runner as runner_api
from clawden.config import GroupConfig
from clawden.runtime import ControlError, ServiceContext, _Subject, sleep_unless_stopping

log = logging.getLogger(__name__)

EVERY = 5.0  # seconds between heartbeats, at most: three fit in `[runner] dead_after` (15 by default)


def interval(dead_after: float) -> float:
    """Seconds between beats: `EVERY`, or a third of `dead_after` where that is shorter, so a runner is declared
    gone only after three beats missed."""
    return min(EVERY, dead_after / 3)


MEMINFO = Path("/proc/meminfo")


def mem_available(meminfo: str) -> int:
    """Bytes in /proc/meminfo's MemAvailable line; -1 when it has none (an old kernel, not Linux)."""
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            fields = rest.split()
            if fields and fields[0].isdigit():
                return int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return -1


def mount_groups(groups: Mapping[str, GroupConfig], exists: Callable[[str], bool]) -> tuple[str, ...]:
    """The agent groups with extra mounts (config.toml's `[groups.<name>] mounts`) whose host folders all exist
    here, by name: the router keeps their new sessions on the runners that have them."""
    return tuple(
        sorted(name for name, group in groups.items() if group.mounts and all(exists(m.host) for m in group.mounts))
    )


def beat(
    runner: str,
    *,
    at: float,
    slots: int,
    running: int,
    queued: int,
    cpus: int,
    load: float,
    memory: int,
    mounts: tuple[str, ...] = (),
    every: float = EVERY,
    reaches_vault: bool = True,
) -> ev.RunnerHeartbeat:
    """The heartbeat for these figures."""
    return ev.RunnerHeartbeat(
        runner=runner,
        at=at,
        every=every,
        slots=slots,
        running=running,
        queued=queued,
        free=max(0, slots - running),
        cpus=cpus,
        load=round(load, 2),
        memory_available=memory,
        mount_groups=mounts,
        reaches_vault=reaches_vault,
    )


def host() -> tuple[int, float, int]:
    """(CPUs, 1-minute load, available memory) of this host."""
    try:
        memory = mem_available(MEMINFO.read_text())
    except OSError:
        memory = -1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return os.cpu_count() or 1, load, memory


def _exists(path: str) -> bool:
    return Path(path).expanduser().exists()


async def publish(ctx: ServiceContext, running: int, queued: int, reaches_vault: bool = True) -> None:
    cfg = ctx.config.runner
    cpus, load, memory = host()
    # A stat may hang on network storage: off the loop. Until it answers this runner does not beat, so the
    # router places nothing new on a host whose mounts hang.
    mounts = await asyncio.to_thread(mount_groups, ctx.config.groups, _exists)
    hb = beat(
        cfg.id,
        at=time.time(),
        slots=cfg.max_containers,
        running=running,
        queued=queued,
        cpus=cpus,
        load=load,
        memory=memory,
        mounts=mounts,
        every=interval(cfg.dead_after),
        reaches_vault=reaches_vault,
    )
    await ctx.nc.publish(subjects.heartbeat(cfg.id), ev.encode(hb))


async def run(ctx: ServiceContext, counts: Callable[[], tuple[int, int]], reaches_vault: Callable[[], bool]) -> None:
    """Beat until the service stops; `counts` says (running, queued) now, `reaches_vault` whether this host's
    containers reach the vault, as last found. A failed publish (NATS away for a moment) is logged and the next
    beat tries again."""
    while True:
        try:
            await publish(ctx, *counts(), reaches_vault())
        except Exception as exc:
            log.warning("heartbeat not sent: %s", exc)
        if not await sleep_unless_stopping(ctx.stopping, interval(ctx.config.runner.dead_after)):
            return


async def serve_own(ctx: ServiceContext, verb: Verb[Any, Any], handler: Callable[[Any], Awaitable[Any]]) -> None:
    """Answer `verb` at this runner's own subject too, with the same contract as the shared one (a bad request
    is the caller's 400, the handler's failure a 500 without a traceback)."""
    identity = natsauth.identity(ctx.name)
    served = _Subject(identity, verb.name)
    served.handlers[verb.request] = handler

    async def serve(req: Request) -> None:
        try:
            answer = await served.answer(req.data)
        except ControlError as exc:
            await req.respond_error("400", str(exc))
            return
        await req.respond(answer)

    runner_id = ctx.config.runner.id
    assert ctx._micro is not None
    await ctx._micro.add_endpoint(
        name=f"{verb.name}-{runner_id}", subject=runner_api.at_runner(runner_id, verb.name), handler=serve
    )
