"""What putting each JetStream write on disk before its acknowledgement costs (`natsauth.jetstream`:
`sync_interval: always`), against the server's default (a sync every two minutes), in one run on this disk.

    .venv/bin/python -m bench.sync [--messages 2000] [--out bench/results/sync.json]

Each case is a fresh nats-server: publishes to the inbound stream one at a time, each waiting for its PubAck (as a
bridge does), then a durable reads them back and acks each one and waits for the server's answer (the consumer's
state is a write too). It also reports what one write and fsync of a small file costs on the same disk, the figure
to scale by on another machine (an SD card's fsync can be a hundred times this one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import keep
from bench.sentlog import summary
from clawden import natsauth, natsserver
from clawden.bus import Consumer, bind, connect, ensure_streams, publish, subjects
from clawden.bus import events as ev


def fsync_ms(folder: Path, n: int = 500) -> float:
    fd = os.open(folder / "fsync.probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        started = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 300)
            os.fsync(fd)
        return round((time.perf_counter() - started) / n * 1000, 4)
    finally:
        os.close(fd)


async def case(folder: Path, messages: int, *, always: bool) -> dict[str, Any]:
    port = natsserver.free_port()
    store = folder / "nats"
    jetstream = natsauth.jetstream(str(store)) if always else {"store_dir": str(store)}
    conf = folder / "nats.conf"
    conf.write_text(json.dumps({"listen": f"127.0.0.1:{port}", "jetstream": jetstream}))
    server = natsserver.start(port, store, config_file=conf)
    nc = await connect(f"nats://127.0.0.1:{port}", "bench")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        route = ev.Route(channel="local", chat_id="bench")
        published: list[float] = []
        for n in range(messages):
            event = ev.InboundMessage(
                route=route, message_id=str(n), sender=ev.Sender(id="local:me"), text="x" * 200, sent_at=float(n)
            )
            started = time.perf_counter()
            await publish(js, subjects.inbound("local"), event, msg_id=event.key)
            published.append((time.perf_counter() - started) * 1000)
        puller = await bind(js, Consumer("CLAWDEN_INBOUND", "bench", subjects.ALL_INBOUND), batch=1)
        acked: list[float] = []
        try:
            while len(acked) < messages:
                for msg in await puller.next(timeout=5):
                    started = time.perf_counter()
                    await msg.ack_sync()
                    acked.append((time.perf_counter() - started) * 1000)
        finally:
            await puller.stop()
        warm = messages // 10
        return {"publish": summary(published[warm:]), "ack": summary(acked[warm:])}
    finally:
        await nc.close()
        server.terminate()
        server.wait(10)


async def run(messages: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Under the home folder, where an install keeps its store: /tmp may be memory, where an fsync costs nothing.
    with tempfile.TemporaryDirectory(prefix="clawden-bench-sync-", dir=Path.home()) as tmp:
        root = Path(tmp)
        out["fsync_ms"] = fsync_ms(root)
        for name, always in (("default", False), ("always", True)):
            (root / name).mkdir()
            out[name] = await case(root / name, messages, always=always)
    for what in ("publish", "ack"):
        out[f"{what}_median_ratio"] = round(out["always"][what]["median_ms"] / out["default"][what]["median_ms"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="per case")
    parser.add_argument("--out", type=Path, default=Path("bench/results/sync.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": platform.platform(), "messages": args.messages}
    result.update(asyncio.run(run(args.messages)))
    keep(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
