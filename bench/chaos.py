"""Chaos at length: many chats talk to a whole Clawden (`clawden up`, real containers, the real Claude
Code CLI, the fake model) while each of its processes is killed in turn (every service, the NATS
server, an agent container) and the Docker engine is paused; then counts what was lost, duplicated
or misrouted (all must be 0). tests/chaos runs the same at a size that fits CI.

    .venv/bin/python -m bench.chaos [--chats 50] [--messages 20] [--every 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench import keep
from tests.chaos import chaos
from tests.e2e.harness import start_stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20, help="per chat")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between kills")
    parser.add_argument("--rounds", type=int, default=2, help="times through every kind of kill")
    parser.add_argument("--max-containers", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench/results/chaos.json"))
    parser.add_argument("--keep", type=Path, help="run in this (new) folder and keep it, logs and all")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clawden-chaos-") as tmp:
        home = args.keep or Path(tmp) / "home"
        stack = start_stack(
            home, ready_timeout=180, runner=f"max_containers = {args.max_containers}\nhang_timeout = 60"
        )
        try:
            figures, chats = asyncio.run(
                chaos.run(
                    stack,
                    chats=args.chats,
                    messages=args.messages,
                    every=args.every,
                    rounds=args.rounds,
                    reply_timeout=600,
                    log=lambda line: print(f"{time.monotonic() - started:7.1f}s {line}", flush=True),
                )
            )
        finally:
            stack.stop()
    result = {
        "chats": args.chats,
        "messages_per_chat": args.messages,
        "kills": [k for k, _ in chaos.KINDS],
        "rounds": args.rounds,
        "seconds": round(time.monotonic() - started, 1),
        **figures,
        "replies": sum(len(c.replies) for c in chats),
        "mismatches": chaos.mismatches(chats)[:30],
    }
    keep(result, args.out)
    return 0 if figures == {"lost": 0, "duplicated": 0, "misrouted": 0} else 1


if __name__ == "__main__":
    sys.exit(main())
