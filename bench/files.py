"""What a bridge's queue for messages with files costs: `Inbound.deliver` timed on a real nats-server and the
bridge's real state (SQLite, FULL-synchronous), against the inline path it replaced (fetch on the listener, then
publish), with an instant download and a slow one.

    .venv/bin/python -m bench.files [--messages 200] [--slow 0.2] [--out bench/results/files.json]

Two figures per message: how long the listener is held (`deliver` returning: the platform's cursor may move and
the next update be read) and how long until the message is stored in JetStream. The queued path writes the message
to the bridge's state and removes it once published (two synced commits), and its chat's own task fetches the file.
The inline path stands for the code before the queue: fetch, then publish, all on the listener.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import keep
from clawden import natsserver
from clawden.bus import connect, ensure_streams, subjects
from clawden.bus import events as ev
from services.channels.bridge import BridgeStats, Capabilities, Inbound
from services.channels.state import BridgeState
from tests.channels.memory_bridge import MemoryBridge

FILE_BYTES = 64 * 1024


class Downloads(MemoryBridge):
    """A platform whose files take `delay` seconds to download."""

    def __init__(self, delay: float) -> None:
        super().__init__(Capabilities(max_text=4096, max_download_bytes=20 * 1024 * 1024))
        self.delay = delay

    async def fetch_file(self, attachment: ev.Attachment, dest: Path) -> None:
        await asyncio.sleep(self.delay)
        await asyncio.to_thread(_write, dest)


def _write(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"x" * FILE_BYTES)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[round(0.95 * (len(ordered) - 1))], 2),
    }


def message(n: int, chats: int) -> ev.InboundMessage:
    chat = str(n % chats)
    attachment = ev.Attachment(name="photo.jpg", mime="image/jpeg", size=FILE_BYTES, url=f"platform://file/{n}")
    return ev.InboundMessage(
        route=ev.Route(channel="memory", chat_id=chat),
        message_id=f"m{n}",
        sender=ev.Sender(id=f"u{chat}"),
        text="a photo",
        sent_at=time.time(),
        attachments=(attachment,),
    )


async def one(tmp: Path, url: str, name: str, delay: float, messages: int, chats: int) -> dict[str, Any]:
    nc = await connect(url, "bench")
    stored: dict[str, asyncio.Future[float]] = {}

    async def on_stored(msg: Any) -> None:
        event = ev.INBOUND_DECODER.decode(msg.data)
        if not isinstance(event, ev.InboundMessage) or (found := stored.get(event.key)) is None or found.done():
            return
        if event.attachments[0].url.startswith("file://"):
            found.set_result(time.perf_counter())
        else:  # the file was not fetched: the figures would time nothing
            found.set_exception(AssertionError(f"stored without its file: {event}"))

    sub = await nc.subscribe(subjects.inbound("memory"), cb=on_stored)
    state = await BridgeState.open(tmp / f"{name}-{delay}.db")
    bridge = Downloads(delay)
    inbound = Inbound(nc.jetstream(), "memory", state, tmp / f"files-{name}-{delay}", BridgeStats(), bridge=bridge)
    held: list[float] = []
    to_bus: list[float] = []
    try:
        for n in range(messages):
            event = message(n, chats)
            stored[event.key] = asyncio.get_running_loop().create_future()
            started = time.perf_counter()
            if name == "queued":
                await inbound.deliver(event)
            else:  # before the queue: the listener fetched, then published
                fetched, why = await inbound._fetch(event)
                assert not why, why
                await inbound._store(fetched)
            held.append((time.perf_counter() - started) * 1000)
            to_bus.append((await stored[event.key] - started) * 1000)

    finally:
        await inbound.close()
        await sub.unsubscribe()
        await state.close()
        await nc.close()
    return {"listener_held": summary(held), "stored": summary(to_bus)}


async def run(messages: int, slow: float, chats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clawden-bench-files-") as tmp:
        port = natsserver.free_port()
        server = natsserver.start(port, Path(tmp) / "nats")
        url = f"nats://127.0.0.1:{port}"
        try:
            bootstrap = await connect(url, "bench")
            await ensure_streams(bootstrap.jetstream())
            await bootstrap.close()
            out: dict[str, Any] = {}
            for delay, count in ((0.0, messages), (slow, max(10, messages // 10))):
                for name in ("inline", "queued"):
                    out[f"{name}, download {delay * 1000:.0f} ms"] = await one(
                        Path(tmp), url, name, delay, count, chats
                    )
            return out
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--slow", type=float, default=0.2, help="the slow download's seconds")
    parser.add_argument("--chats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results/files.json"))
    args = parser.parse_args()
    figures = asyncio.run(run(args.messages, args.slow, args.chats))
    keep({"machine": platform.node(), "cpus": os.cpu_count(), **figures}, args.out)


if __name__ == "__main__":
    main()
