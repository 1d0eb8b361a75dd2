"""Routed inbound events per second for one router process (`clawden run router`) with its SQLite store,
on a real nats-server: a backlog of events is preloaded, then the router drains it.

    .venv/bin/python -m bench.router [--events 10000] [--runs 5] [--out bench/results/router.json]

Each event is a group-chat message in one of 50 chats; agent group `main` answers every message and
`helper` only mentions (a third), so an event makes 1.33 wakes on average. Throughput is measured
from the first acked batch to the last ack, by polling the router's durable consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import Header

from bench import keep
from clawden import control, natsserver, setup
from clawden.bus import connect, ensure_streams, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Nothing, Verb
from clawden.bus.ctl import router as ctl
from clawden.bus.ctl.common import PING

CHANNEL = "bench"
CHATS = 50
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


def router(home: Path, url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CLAWDEN_HOME=str(home), CLAWDEN_NATS_URL=url)
    with (home / "router.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "router"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def ask(nc: Client, verb: Verb[Req, Rep], request: Req) -> Rep:
    """The router's control verb with the typed client, asked again while the router is still starting."""
    return await control.ask_on(nc, verb, request, timeout=30, wait_for_service=True)


async def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proc.wait, 30)


def event(i: int) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel=CHANNEL, chat_id=f"chat{i % CHATS}"),
        message_id=f"m{i}",
        sender=ev.Sender(id=f"{CHANNEL}:u{i % 17}", name="Bench"),
        text=f"message {i}",
        sent_at=float(i),
        is_group=True,
        mentioned=i % 3 == 0,
        chat_name=f"chat {i % CHATS}",
    )


async def preload(js: JetStreamContext, count: int) -> None:
    subject = subjects.inbound(CHANNEL)
    for start in range(0, count, 500):
        await asyncio.gather(
            *(
                js.publish(subject, ev.encode(e), headers={Header.MSG_ID: e.key})
                for e in map(event, range(start, min(count, start + 500)))
            )
        )


async def one_run(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="clawden-bench-router-") as tmp:
        home = Path(tmp) / "home"
        setup.init(home)
        port = natsserver.free_port()
        url = f"nats://127.0.0.1:{port}"
        server = natsserver.start(port, Path(tmp) / "nats")
        nc = await connect(url, "bench")
        proc = router(home, url)
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await ask(nc, ctl.GROUPS_CREATE, ctl.GroupCreate(name="helper"))
            await ask(
                nc, ctl.CHATS_CREATE, ctl.ChatCreate(channel=CHANNEL, chat_id="*", is_group=True, policy="public")
            )
            modes: tuple[tuple[str, ctl.EngageMode], ...] = (("main", "pattern"), ("helper", "mention"))
            for group, mode in modes:
                wiring = ctl.WiringCreate(channel=CHANNEL, chat_id="*", agent_group=group, engage_mode=mode)
                await ask(nc, ctl.WIRINGS_CREATE, wiring)
            await stop(proc)
            await preload(js, count)
            proc = router(home, url)
            first_ack = last_ack = 0.0
            acked_at_first = 0
            while True:
                info = await js.consumer_info("CLAWDEN_INBOUND", "router")
                acked = info.ack_floor.stream_seq if info.ack_floor else 0
                now = time.perf_counter()
                if acked and not first_ack:
                    first_ack, acked_at_first = now, acked
                if acked >= count:
                    last_ack = now
                    break
                await asyncio.sleep(0.01)
            wakes = (await js.stream_info("CLAWDEN_WAKE")).state.messages
            stats = (await ask(nc, PING.at("router"), Nothing())).stats["router"]
            assert stats["routed"] == count, stats
            return {
                "events_per_s": (count - acked_at_first) / (last_ack - first_ack),
                "wakes_per_event": wakes / count,
                "seconds": last_ack - first_ack,
            }
        finally:
            if proc.poll() is None:
                await stop(proc)
            await nc.close()
            server.terminate()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/router.json"))
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        run = asyncio.run(one_run(args.events))
        runs.append(run)
        print(
            f"  run {i + 1}/{args.runs}: {run['events_per_s']:.0f} events/s ({run['wakes_per_event']:.2f} wakes/event)",
            file=sys.stderr,
        )
    rates = [r["events_per_s"] for r in runs]
    result = {
        "events": args.events,
        "chats": CHATS,
        "runs": [round(r, 1) for r in rates],
        "median_events_per_s": round(statistics.median(rates), 1),
        "wakes_per_event": round(runs[0]["wakes_per_event"], 3),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version},
    }
    keep(result, args.out, show=False)
    print(
        f"router: median {result['median_events_per_s']} routed events/s over {args.runs} runs of {args.events}"
        f" ({result['wakes_per_event']} wakes per event); written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
