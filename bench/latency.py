"""Inbound-to-reply latency of a whole Clawden (`clawden up`, a real container, the real Claude Code CLI)
against the fake model, for a warm session (its container runs) and a cold one (no container yet).

    .venv/bin/python -m bench.latency [--warm 50] [--cold 8] [--out bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.e2e.harness import Stack, Terminal, start_stack

NANOCLAW_POLL_FLOOR_MS = 1000.0  # NanoClaw polls both session files every second


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2),
            "min_ms": round(ordered[0], 2), "max_ms": round(ordered[-1], 2)}


async def timed_turn(term: Terminal, text: str) -> tuple[float, str]:
    start = time.perf_counter()
    reply = await term.ask(text, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000
    assert text in reply.text, reply.text
    return elapsed, reply.session_id


async def measure(stack: Stack, warm: int, cold: int) -> dict[str, object]:
    cold_ms: list[float] = []
    for i in range(cold):
        async with Terminal(stack.nats_url, f"cold-{i}") as term:
            elapsed, session = await timed_turn(term, f"cold hello {i}")
            cold_ms.append(elapsed)
            await stack.wait_until_idle(session)
        for c in stack.containers():  # keep one container at a time, as a fresh chat would see
            c.remove(force=True)
        print(f"  cold {i + 1}/{cold}: {elapsed:.0f} ms", file=sys.stderr)

    warm_ms: list[float] = []
    async with Terminal(stack.nats_url, "warm") as term:
        _, session = await timed_turn(term, "warm up")
        await stack.wait_until_idle(session)
        for i in range(warm):
            elapsed, session = await timed_turn(term, f"warm hello {i}")
            warm_ms.append(elapsed)
            await stack.wait_until_idle(session)
    warm_summary = summary(warm_ms)
    return {
        "warm": warm_summary,
        "cold": summary(cold_ms),
        "nanoclaw_floor_over_warm_median": round(NANOCLAW_POLL_FLOOR_MS / warm_summary["median_ms"], 1),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=50, help="warm turns (default 50)")
    parser.add_argument("--cold", type=int, default=8, help="cold starts (default 8)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clawden-bench-") as tmp:
        stack = start_stack(Path(tmp) / "home")
        try:
            result = asyncio.run(measure(stack, args.warm, args.cold))
        finally:
            stack.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    w, c = result["warm"], result["cold"]
    print(f"warm turn: median {w['median_ms']} ms, p95 {w['p95_ms']} ms (n={w['n']})")  # type: ignore[index]
    print(f"cold turn: median {c['median_ms']} ms, p95 {c['p95_ms']} ms (n={c['n']})")  # type: ignore[index]
    print(f"NanoClaw's 1000 ms poll floor is {result['nanoclaw_floor_over_warm_median']}x the warm median")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
