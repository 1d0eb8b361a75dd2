"""How long other chats' replies wait while Telegram holds one chat back: the Telegram bridge
(`clawden run channel@telegram`) against the fake Bot API, on a real nats-server.

    .venv/bin/python -m bench.outbound [--rounds 3] [--chats 20] [--stall 5] [--out bench/results/outbound.json]

Each round, a busy group's message meets a 429 with `retry_after` of `--stall` seconds; then one
message to each of `--chats` other chats is published, 50 ms apart, and timed from its publish to
Telegram taking it, through the chats' lanes (eight durables read at once, one message in flight
each). The single durable of before lanes was measured against it once (README) and is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import keep
from clawden import natsserver
from clawden.bus import events as ev
from clawden.bus import publish, subjects
from tests.channels.harness import BridgeProcess, Bus, until
from tests.fakes.telegram import Error, FakeTelegram


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ordered[-1], 1),
        "over_1s": sum(1 for s in ordered if s > 1000),
    }


async def run(rounds: int, chats: int, stall: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="clawden-bench-outbound-") as tmp:
        port = natsserver.free_port()
        server = natsserver.start(port, Path(tmp) / "nats")
        fake = FakeTelegram().start_in_thread()
        bridge = BridgeProcess(Path(tmp) / "home", f"nats://127.0.0.1:{port}", fake)
        bus = await Bus.open(bridge.nats_url)
        try:
            bridge.start()
            busy = fake.group("Busy group")
            others = [fake.private_chat(fake.user(f"User{i}")) for i in range(chats)]
            published: dict[str, float] = {}

            async def send(chat: dict[str, Any], key: str) -> None:
                event = ev.OutboundMessage(
                    id=key, route=ev.Route(channel="telegram", chat_id=str(chat["id"])), text=key
                )
                published[key] = time.time()
                await publish(bus.js, subjects.outbound("telegram", event.route.chat_id), event, msg_id=key)

            for r in range(rounds):
                fake.inject("sendMessage", Error(429, retry_after=stall))
                await send(busy, f"busy-{r}")
                await until(lambda: fake.pending_faults == 0, 30, "the busy group's send never reached Telegram")
                for i, chat in enumerate(others):
                    await send(chat, f"other-{r}-{i}")
                    await asyncio.sleep(0.05)
                await bus.wait_receipts((r + 1) * (chats + 1), timeout=stall * 3 + 30)
            taken = {c.params["text"]: c.at for c in fake.calls_to("sendMessage") if c.outcome == "ok"}
            return summary([(taken[k] - published[k]) * 1000 for k in published if k.startswith("other-")])
        finally:
            bridge.close()
            await bus.close()
            fake.stop_thread()
            server.terminate()
            server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--stall", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/outbound.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": platform.platform(),
        "rounds": args.rounds,
        "chats": args.chats,
        "stall_s": args.stall,
        "lane_count": subjects.OUTBOUND_LANES,
    }
    result["lanes"] = asyncio.run(run(args.rounds, args.chats, args.stall))
    print(f"other chats' latency while one is held back {args.stall}s: {result['lanes']}")
    keep(result, args.out, show=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
