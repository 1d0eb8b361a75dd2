"""What a three-node NATS cluster with R3 streams costs against the single embedded server: the warm turn of a
whole Clawden (`clawden up`, a real container, the real Claude Code CLI, the fake model) and the router's
routed events per second (`clawden run router` draining a preloaded backlog, as bench/router.py). One run
of each on each bus; medians and the cluster's ratios. With --failover it also runs tests/cluster's
failover at size: 20 chats, 200 messages, the wake stream's leader node SIGKILLed mid-way. With --runner-loss it
runs only tests/cluster's runner loss at size instead: two runners on shared storage, 20 chats of 20 messages, runner
b SIGKILLed (then, afresh, SIGSTOPped past dead_after and SIGCONTed), and how long b's chats waited for their next
reply after the loss (dead_after is 3 s there).

    .venv/bin/python -m bench.cluster [--warm 30] [--events 3000] [--failover] [--out bench/results/cluster.json]
    .venv/bin/python -m bench.cluster --runner-loss [--chats 20] [--messages 20] [--out bench/results/runner-loss.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from nats.aio.client import Client

from bench.latency import summary, timed_turn
from bench.router import ask, preload, stop
from clawden import config, natsauth, natsserver, setup
from clawden.bus import connect
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import router as ctl
from clawden.bus.ctl.common import PING
from tests.cluster import failover, runnerloss
from tests.cluster.nodes import Cluster
from tests.e2e.harness import Stack, Terminal, start_stack

BUSES = ("single", "cluster")


@asynccontextmanager
async def bus(home: Path, kind: str) -> AsyncIterator[tuple[str, Cluster | None]]:
    """The install's bus: its embedded server as `clawden up` starts it, or three nodes from `clawden cluster
    init`; yields the URL(s) and the cluster. Either way the router logs in with its own nkey."""
    cfg = setup.init(home)
    if kind == "single":
        proc = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=natsauth.write_server_config(cfg, ()))
        try:
            yield cfg.nats_url, None
        finally:
            proc.terminate()
            proc.wait()
        return
    nodes = Cluster(home).start()
    toml = cfg.path("config.toml")
    toml.write_text(toml.read_text().replace('url = ""\n', nodes.nats_settings, 1))
    try:
        yield config.load(home).nats_url, nodes
    finally:
        nodes.stop()


def router(home: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("CLAWDEN_NATS_URL", None)
    with (home / "router.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "router"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def cli(home: Path) -> Client:
    cfg = config.load(home)
    return await connect(cfg.nats_url, "bench", nkeys_seed_str=natsauth.load_seed(cfg, natsauth.CLI))


async def routed_per_second(kind: str, count: int) -> float:
    """bench/router.py's run: wire two groups, preload `count` events, time the router's drain."""
    with tempfile.TemporaryDirectory(prefix=f"clawden-bench-cluster-{kind}-") as tmp:
        home = Path(tmp) / "home"
        async with bus(home, kind):
            proc = router(home)
            nc = await cli(home)
            try:
                await ask(nc, ctl.GROUPS_CREATE, ctl.GroupCreate(name="helper"))
                await ask(
                    nc, ctl.CHATS_CREATE, ctl.ChatCreate(channel="bench", chat_id="*", is_group=True, policy="public")
                )
                for group, mode in (("main", "pattern"), ("helper", "mention")):
                    wiring = ctl.WiringCreate(channel="bench", chat_id="*", agent_group=group, engage_mode=mode)  # type: ignore[arg-type]
                    await ask(nc, ctl.WIRINGS_CREATE, wiring)
                await stop(proc)
                js = nc.jetstream()
                await preload(js, count)
                proc = router(home)
                first = last = 0.0
                acked_first = 0
                while True:  # the router's ack floor is the only measure of progress it gives; polled
                    info = await js.consumer_info("CLAWDEN_INBOUND", "router")
                    acked = info.ack_floor.stream_seq if info.ack_floor else 0
                    now = time.perf_counter()
                    if acked and not first:
                        first, acked_first = now, acked
                    if acked >= count:
                        last = now
                        break
                    await asyncio.sleep(0.01)
                stats = (await ask(nc, PING.at("router"), Nothing())).stats["router"]
                assert stats["routed"] == count, stats
                return (count - acked_first) / (last - first)
            except Exception:
                print((home / "router.log").read_text()[-3000:], file=sys.stderr)  # the tmp dir goes with us
                raise
            finally:
                if proc.poll() is None:
                    await stop(proc)
                await nc.close()


async def warm_turns(stack: Stack, warm: int) -> list[float]:
    out: list[float] = []
    async with Terminal(stack, "warm") as term:
        _, session = await timed_turn(term, "warm up")
        await stack.wait_until_idle(session)
        for i in range(warm):
            elapsed, session = await timed_turn(term, f"warm hello {i}")
            out.append(elapsed)
            await stack.wait_until_idle(session)
    return out


def whole(kind: str, warm: int, chats: int, messages: int) -> dict[str, dict[str, float]]:
    """A whole Clawden on this bus: its warm turns, and (cluster, chats > 0) the failover count."""
    with tempfile.TemporaryDirectory(prefix=f"clawden-bench-cluster-{kind}-") as tmp:
        home = Path(tmp) / "home"
        nodes = Cluster(home).start() if kind == "cluster" else None
        try:
            runner = "max_containers = 20\nhang_timeout = 60"
            stack = start_stack(home, ready_timeout=180, runner=runner, nats=nodes.nats_settings if nodes else "")
            try:
                out: dict[str, dict[str, float]] = {"warm": summary(asyncio.run(warm_turns(stack, warm)))}
                if nodes and chats:
                    started = time.monotonic()
                    figures, talked = asyncio.run(
                        failover.run(stack, nodes, chats=chats, messages=messages, reply_timeout=600)
                    )
                    out["failover"] = {
                        "chats": chats,
                        "messages": sum(len(c.sent) for c in talked),
                        "seconds": round(time.monotonic() - started, 1),
                        **figures,
                    }
                return out
            finally:
                stack.stop()
        finally:
            if nodes:
                nodes.stop()


def runner_loss(chats: int, messages: int) -> dict[str, object]:
    """Runner b lost (killed, then in a fresh install stopped and let go on) while chats talk."""
    out: dict[str, object] = {"dead_after_s": runnerloss.DEAD_AFTER}
    for how in ("kill", "stop"):
        with (
            tempfile.TemporaryDirectory(prefix=f"clawden-bench-runner-{how}-") as tmp,
            runnerloss.pair(Path(tmp), max_containers=20) as p,
        ):
            started = time.monotonic()
            loss = asyncio.run(
                runnerloss.lose_b(
                    p,
                    how,
                    chats=chats,
                    messages=messages,
                    reply_timeout=600,
                    log=lambda s: print(s, file=sys.stderr),
                )
            )
            waits = sorted(loss.waits)
            out[how] = {
                "chats": chats,
                "messages": sum(len(c.sent) for c in loss.chats),
                "chats_on_b": len(loss.on_b),
                "seconds": round(time.monotonic() - started, 1),
                "wait_after_loss_median_s": round(waits[len(waits) // 2], 1),
                "wait_after_loss_max_s": round(waits[-1], 1),
                **loss.figures,
            }
            print(f"  {how}: {out[how]}", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=30, help="warm turns on each bus")
    parser.add_argument("--events", type=int, default=3000, help="events the router drains on each bus")
    parser.add_argument("--failover", action="store_true", help="also 20 chats x 10 messages with a node killed")
    parser.add_argument("--runner-loss", action="store_true", help="only: a runner lost, with shared storage")
    parser.add_argument("--chats", type=int, default=20, help="--runner-loss: chats talking")
    parser.add_argument("--messages", type=int, default=20, help="--runner-loss: messages each chat sends")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.runner_loss:
        loss = runner_loss(args.chats, args.messages)
        loss["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
        out = args.out or Path("bench/results/runner-loss.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(loss, indent=2) + "\n")
        print(f"written to {out}")
        return 0
    args.out = args.out or Path("bench/results/cluster.json")
    result: dict[str, object] = {}
    rates: dict[str, float] = {}
    warm_medians: dict[str, float] = {}
    for kind in BUSES:
        rates[kind] = asyncio.run(routed_per_second(kind, args.events))
        print(f"  {kind}: {rates[kind]:.0f} routed events/s", file=sys.stderr)
        turns = whole(kind, args.warm, 20 if args.failover else 0, 10)
        warm_medians[kind] = turns["warm"]["median_ms"]
        print(f"  {kind}: warm turn median {warm_medians[kind]} ms", file=sys.stderr)
        result[kind] = {"routed_events_per_s": round(rates[kind], 1), **turns}
    result["cluster_over_single"] = {
        "warm_median": round(warm_medians["cluster"] / warm_medians["single"], 2),
        "routed_events_per_s": round(rates["cluster"] / rates["single"], 2),
    }
    result["events"], result["machine"] = args.events, {"python": platform.python_version(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["cluster_over_single"]), f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
