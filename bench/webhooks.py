"""How many signed webhooks a second the front door takes from loopback, each answered only after JetStream
stored it: `clawden run webhooks` on a real nats-server, deliveries signed like Meta's.

    .venv/bin/python -m bench.webhooks [--count 5000] [--connections 32] [--out bench/results/webhooks.json]

The sender is a minimal HTTP/1.1 client on raw asyncio streams (keep-alive, one request in flight per
connection), so that on a small machine the load generator costs little beside the door. Each body is a
distinct WhatsApp text delivery of about 600 bytes. At the end the stream must hold exactly `--count`
messages: a 200 that JetStream did not have would show here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from clawden import natsserver
from clawden.bus import connect
from tests.fakes.whatsapp import APP_SECRET, WebhookSender, sign
from tests.webhooks.harness import FrontDoorProcess, make_home


async def connection(port: int, bodies: list[bytes], latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for body in bodies:
            head = (
                f"POST /hooks/whatsapp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"x-hub-signature-256: {sign(APP_SECRET, body)}\r\ncontent-length: {len(body)}\r\n\r\n"
            )
            started = time.perf_counter()
            writer.write(head.encode() + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            status = int(status_line.split()[1])
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def run(count: int, connections: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clawden-bench-webhooks-") as tmp:
        nats_port = natsserver.free_port()
        server = natsserver.start(nats_port, Path(tmp) / "nats")
        home = Path(tmp) / "home"
        port = make_home(home, settings="rate = 1000000.0\nburst = 1000000")
        door = FrontDoorProcess(home, f"nats://127.0.0.1:{nats_port}", port, Path(tmp) / "webhooks.log")
        try:
            await door.start()
            sender = WebhookSender(door.url)
            bodies = [json.dumps(sender.text("447700900123", f"benchmark message {i}")).encode() for i in range(count)]
            latencies: list[float] = []
            statuses: dict[int, int] = {}
            # A warm-up of one request per connection, not counted.
            await asyncio.gather(
                *(
                    connection(port, [json.dumps(sender.text("1", f"warm {i}")).encode()], [], {})
                    for i in range(connections)
                )
            )
            started = time.perf_counter()
            await asyncio.gather(
                *(connection(port, bodies[i::connections], latencies, statuses) for i in range(connections))
            )
            elapsed = time.perf_counter() - started
            nc = await connect(f"nats://127.0.0.1:{nats_port}", "bench")
            stored = (await nc.jetstream().stream_info("CLAWDEN_WEBHOOKS")).state.messages - connections
            await nc.close()
        finally:
            door.stop()
            server.terminate()
            server.wait(10)
    ordered = sorted(latencies)
    return {
        "count": count,
        "connections": connections,
        "per_second": round(count / elapsed),
        "median_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 2),
        "statuses": statuses,
        "stored": stored,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args.count, args.connections))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if result["stored"] != args.count or result["statuses"] != {200: args.count}:
        raise SystemExit("not every webhook was answered 200 and stored once")


if __name__ == "__main__":
    main()
