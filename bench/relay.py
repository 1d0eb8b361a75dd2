"""Agent-to-agent sends through one router process (`clawden run router`) on a real nats-server: how long one
send takes from the runner's publish on the agent channel to the target session's wake, one at a time, and how
many sends per second the router relays from a backlog.

    .venv/bin/python -m bench.relay [--sends 200] [--backlog 5000] [--out bench/results/relay.json]

Agent group `main` has a destination `writer`; every send comes from one session of `main` (made by a person's
message first), each its own outbound row, so each is relayed (hop 1 after the person's message resets the count).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import Header

from bench import keep
from bench.router import ask, router, stop
from clawden import natsserver, setup
from clawden.bus import Consumer, bind, connect, ensure_streams, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import router as ctl

WAKES = f"{subjects.PREFIX}.wake.>"
TO_WRITER = ev.Route(channel="agent", chat_id="writer")


def send(session_id: str, n: int) -> ev.OutboundMessage:
    return ev.OutboundMessage(
        id=f"{session_id}:r{n}", route=TO_WRITER, text=f"send {n}", session_id=session_id, agent_group="main", seq=n
    )


async def publish(js: JetStreamContext, event: ev.OutboundMessage) -> None:
    subject = subjects.outbound("agent", "writer")
    await js.publish(subject, ev.encode(event), headers={Header.MSG_ID: event.id})


async def person(js: JetStreamContext, n: int) -> None:
    """A person's message to `main` (a terminal chat): the session, and a fresh hop count."""
    event = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id="bench"),
        message_id=f"p{n}",
        sender=ev.Sender(id="local:bench"),
        text="go",
        sent_at=time.time(),
    )
    await js.publish(subjects.inbound("local"), ev.encode(event), headers={Header.MSG_ID: event.key})


async def run(sends: int, backlog: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="clawden-bench-relay-") as tmp:
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
            await ask(nc, ctl.GROUPS_CREATE, ctl.GroupCreate(name="writer"))
            destination = ctl.DestinationAdd(agent_group="main", name="writer", channel="agent", chat_id="writer")
            await ask(nc, ctl.DESTINATIONS_ADD, destination)
            wakes = await bind(js, Consumer("CLAWDEN_WAKE", "bench-wakes", WAKES), batch=256)
            await person(js, 0)
            [first] = [ev.decode(m.data) for m in await wakes.next(timeout=30)]
            assert isinstance(first, ev.Wake)
            session = first.session_id
            latencies: list[float] = []
            for n in range(1, sends + 1):
                started = time.perf_counter()
                await publish(js, send(session, n))
                while not (got := await wakes.next(timeout=5)):
                    pass
                latencies.append(time.perf_counter() - started)
                for m in got:
                    await m.ack()
            # The backlog: the router stopped, the sends waiting on the stream, then drained.
            await stop(proc)
            for n in range(sends + 1, sends + backlog + 1):
                await publish(js, send(session, n))
            proc = router(home, url)
            first_at, seen_at_first, seen = 0.0, 0, 0
            while seen < backlog:
                got = await wakes.next(timeout=10)
                if got and not first_at:
                    first_at, seen_at_first = time.perf_counter(), len(got)
                seen += len(got)
                for m in got:
                    await m.ack()
            drained = time.perf_counter() - first_at
            latencies.sort()
            return {
                "relay_p50_ms": statistics.median(latencies) * 1000,
                "relay_p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
                # From the first wake to the last: the router's own start is not counted.
                "backlog_relays_per_s": (backlog - seen_at_first) / drained,
            }
        finally:
            if proc.poll() is None:
                await stop(proc)
            await nc.close()
            server.terminate()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/relay.json"))
    args = parser.parse_args()
    result: dict[str, object] = dict(asyncio.run(run(args.sends, args.backlog)))
    result |= {"sends": args.sends, "backlog": args.backlog, "python": platform.python_version()}
    keep(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
