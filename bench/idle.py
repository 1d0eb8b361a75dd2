"""The idle stack: what a running Clawden with no chats costs the machine, with `clawden up`'s children
forked from it (the default on Linux) and started afresh, measured in one run.

For each: the memory of every process (PSS, which sums to what they cost together, and RSS), and their
CPU share over `--seconds` of idleness, `clawden up` itself included.

    .venv/bin/python -m bench.idle [--seconds 30] [--out bench/results/idle.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import keep
from bench.scale import idle_stack
from tests.e2e.harness import start_stack


def measure(fork: bool, seconds: float) -> dict[str, Any]:
    os.environ["CLAWDEN_UP_FORK"] = "1" if fork else "0"
    with tempfile.TemporaryDirectory(prefix="clawden-idle-") as tmp:
        stack = start_stack(Path(tmp) / "home", ready_timeout=180)
        try:
            time.sleep(5)  # past the start's one-off work (streams, consumers, the CA self-test)
            return asyncio.run(idle_stack(stack, seconds))
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/idle.json"))
    args = parser.parse_args()
    forked, afresh = measure(True, args.seconds), measure(False, args.seconds)
    result = {"forked": forked, "afresh": afresh, "pss_ratio": round(forked["pss_mb"] / afresh["pss_mb"], 2)}
    keep(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
