"""What the placement fence costs each session-folder write (clawden/sessiondb.py): the same writes with no fence
(an older runner: unfenced) and fenced (the fence row read inside each write transaction; for outbound.db with
inbound.db attached read-only first), and the read-only check before a publish (`check_fence`).

    .venv/bin/python -m bench.fence [--n 2000] [--out bench/results/fence.json]

On the local disk of the machine it runs on; on NFS every open and lock costs a round trip more.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from clawden import sessiondb

ROUTE = sessiondb.Routing("local", "bench")


def timed(n: int, op: Callable[[int], object]) -> dict[str, float]:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        op(i)
        samples.append((time.perf_counter() - started) * 1e6)
    ordered = sorted(samples)
    return {"median_us": round(statistics.median(ordered), 1), "p95_us": round(ordered[int(0.95 * (n - 1))], 1)}


def ops(folder: Path, base: int) -> dict[str, Callable[[int], object]]:
    """`base`: each run's cursor starts above the last, so every mark_published really writes."""
    return {
        "set_state (outbound.db)": lambda i: sessiondb.set_state(folder, "k", str(i)),
        "mark_published (inbound.db)": lambda i: sessiondb.mark_published(folder, base + i + 1),
        "check_fence (read only)": lambda i: sessiondb.check_fence(folder),
    }


def run(n: int) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="clawden-bench-fence-") as tmp:
        folder = Path(tmp)
        sessiondb.ensure_inbound(folder)
        sessiondb.ensure_outbound(folder)
        for base, mode in enumerate(("unfenced", "fenced")):
            sessiondb.write_as("a" if mode == "fenced" else None)
            if mode == "fenced":
                sessiondb.claim(folder, 1, "a")
            results[mode] = {name: timed(n, op) for name, op in ops(folder, base * n).items()}
        sessiondb.write_as(None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {"machine": platform.machine(), "python": platform.python_version(), "n": args.n, **run(args.n)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
