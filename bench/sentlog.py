"""What the shared sent-log (clawden/bus/sentlog.py) adds to each outbound message: `Delivery.handle` timed on a
real nats-server with an in-memory platform, once with the shared log and once with a stand-in that stores
nothing, for messages of one part and of three.

    .venv/bin/python -m bench.sentlog [--messages 300] [--out bench/results/sentlog.json]

Each part costs two publishes there (the claim, 'sending', and 'sent' after the platform call); the rest of
a message's cost (the bridge's own SQLite log, written FULL-synchronously, and the receipt) is the same in both.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from nats.aio.msg import Msg

from bench import keep
from clawden import natsserver
from clawden.bus import connect, ensure_streams, sentlog
from clawden.bus import events as ev
from services.channels.bridge import BridgeStats
from services.channels.delivery import Delivery, TypingIndicators
from services.channels.retry import RetryPolicy
from services.channels.state import BridgeState
from tests.channels.memory_bridge import MemoryBridge


class NoSharedLog(sentlog.SentLog):
    """Claims every part and stores nothing: delivery as it was before the shared log."""

    async def claim(self, outbound_id: str, part: int, kind: sentlog.PartKind, *, dedupe_window: float) -> None:
        return None

    async def record(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Msg:
    metadata = SimpleNamespace(num_delivered=1, sequence=SimpleNamespace(stream=1))

    async def in_progress(self) -> None:
        pass


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[round(0.95 * (len(ordered) - 1))], 3),
    }


async def run(messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clawden-bench-sentlog-") as tmp:
        port = natsserver.free_port()
        server = natsserver.start(port, Path(tmp) / "nats")
        nc = await connect(f"nats://127.0.0.1:{port}", "bench")
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            out: dict[str, Any] = {}
            for parts in (1, 3):
                text = "\n\n".join(["x" * 15] * parts)  # parts of 15 characters, max_text 20
                for name in ("without", "with"):
                    state = await BridgeState.open(Path(tmp) / f"{name}-{parts}.db")
                    bridge = MemoryBridge()
                    shared = NoSharedLog(js, bridge.name, "bench") if name == "without" else None
                    delivery = Delivery(
                        bridge,
                        state,
                        js,
                        BridgeStats(),
                        TypingIndicators(bridge),
                        stopping=asyncio.Event(),
                        policy=RetryPolicy(),
                        typing_horizon=60,
                        file_roots=(Path(tmp),),
                        shared=shared,
                    )
                    route = ev.Route(channel=bridge.name, chat_id="c1")
                    samples = []
                    for n in range(messages):
                        event = ev.OutboundMessage(id=f"{name}-{parts}-{n}", route=route, text=text)
                        started = time.perf_counter()
                        await delivery.handle(event, cast("Msg", _Msg()))
                        samples.append((time.perf_counter() - started) * 1000)
                    await state.close()
                    out[f"{name}_shared_log_{parts}_part"] = summary(samples[messages // 10 :])  # past the warm-up
                added = (
                    out[f"with_shared_log_{parts}_part"]["median_ms"]
                    - out[f"without_shared_log_{parts}_part"]["median_ms"]
                )
                out[f"added_median_ms_{parts}_part"] = round(added, 3)
            return out
        finally:
            await nc.close()
            server.terminate()
            server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="per case")
    parser.add_argument("--out", type=Path, default=Path("bench/results/sentlog.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": platform.platform(), "messages": args.messages}
    result.update(asyncio.run(run(args.messages)))
    keep(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
