"""Fifty live sessions on one machine: a whole Clawden (`clawden up`, real containers, the real Claude
Code CLI, the fake model) with `max_containers` chats talking at once.

Phases, measured in one run:
- cold wave: every chat sends its first message at the same moment (no container runs yet);
- steady: Poisson arrivals at `--rate` messages/s summed over all chats, for `--seconds`;
- burst: every chat sends at once, warm; the drain time is until the last reply;
- then CPU seconds per answered message of Claude Code, the runner, the router and NATS (steady phase),
  the memory of each idle container, and the idle stack once its containers are gone (PSS and RSS, CPU %),
  `clawden up` itself included.

    .venv/bin/python -m bench.scale [--chats 50] [--rate 2] [--seconds 60] [--out bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench import keep
from bench.latency import idle_memory_mib, summary
from tests.chaos.chaos import SERVICES, nats_pid
from tests.e2e.harness import Stack, Terminal, service_pid, start_stack

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Chat:
    """A terminal chat whose replies are matched to the messages they echo, however merged."""

    def __init__(self, term: Terminal) -> None:
        self.term = term
        self.pending: dict[str, float] = {}  # text -> when it was sent
        self.latencies: list[float] = []
        self._answered = asyncio.Event()
        self._answered.set()
        self._reader = asyncio.create_task(self._read())

    async def send(self, text: str) -> None:
        self.pending[text] = time.perf_counter()
        self._answered.clear()
        await self.term.send(text)

    async def _read(self) -> None:
        while True:
            try:
                reply = await self.term.reply(timeout=3600)  # whatever it answers: matched by the text it echoes
            except TimeoutError:
                continue
            now = time.perf_counter()
            for text in [t for t in self.pending if f">{t}<" in reply.text or f">{t}\n" in reply.text]:
                self.latencies.append((now - self.pending.pop(text)) * 1000)
            if not self.pending:
                self._answered.set()

    async def drained(self) -> None:
        await self._answered.wait()

    def close(self) -> None:
        self._reader.cancel()


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    """RSS, and PSS: each shared page divided among the processes that map it, so that PSS sums to what
    the processes cost the machine together (RSS counts a shared page once per process)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except OSError:
        return {"rss": 0.0, "pss": 0.0}
    return {k: int(fields[k.capitalize()].split()[0]) / 1000 for k in ("rss", "pss")}


def claude_code_pids() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_bundled/claude" in (entry / "cmdline").read_bytes().split(b"\0")[0]:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


async def stack_pids(stack: Stack) -> dict[str, int]:
    pids = {name: await service_pid(stack, name) for name in SERVICES}
    nats = nats_pid(stack)
    assert nats is not None
    return pids | {"nats": nats}


async def idle_stack(stack: Stack, seconds: float) -> dict[str, Any]:
    """The stack at rest for `seconds`: the PSS and RSS of each process, `clawden up` itself included, and
    their CPU share."""
    pids = await stack_pids(stack) | {"supervisor": stack.proc.pid}
    cpu0, t0 = sum(cpu_seconds(p) for p in pids.values()), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu = (sum(cpu_seconds(p) for p in pids.values()) - cpu0) / (time.perf_counter() - t0) * 100
    held = {k: {m: round(v, 1) for m, v in memory_mb(p).items()} for k, p in pids.items()}
    return {
        "pss_mb": round(sum(m["pss"] for m in held.values()), 1),
        "rss_mb": round(sum(m["rss"] for m in held.values()), 1),
        "cpu_percent": round(cpu, 2),
        "per_process_mb": held,
    }


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(f) for f in open("/proc/stat").readline().split()[1:]]  # noqa: SIM115
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


async def cold_wave(chats: list[Chat]) -> dict[str, object]:
    started = time.perf_counter()
    busy0, total0 = machine_jiffies()
    await asyncio.gather(*(c.send(f"{c.term.chat_id} first") for c in chats))
    await asyncio.gather(*(c.drained() for c in chats))
    busy1, total1 = machine_jiffies()
    firsts = [c.latencies[0] for c in chats]
    return {
        "last_first_reply_s": round(time.perf_counter() - started, 2),
        **summary(firsts),
        # Under 1: the wave waited on something other than the CPUs.
        "machine_cpu_busy": round((busy1 - busy0) / max(1, total1 - total0), 2),
    }


async def steady(chats: list[Chat], rate: float, seconds: float, rng: random.Random) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        await asyncio.sleep(rng.expovariate(rate))
        chat = rng.choice(chats)
        await chat.send(f"{chat.term.chat_id} steady {n}")
        n += 1
    await asyncio.gather(*(c.drained() for c in chats))
    return n


async def measure(
    stack: Stack, n_chats: int, rate: float, seconds: float, cold_only: bool = False
) -> dict[str, object]:
    rng = random.Random(7)
    async with AsyncExitStack() as exits:
        terms = [await exits.enter_async_context(Terminal(stack, f"scale-{i}")) for i in range(n_chats)]
        chats = [Chat(t) for t in terms]
        print("cold wave …", file=sys.stderr)
        cold = await cold_wave(chats)
        if cold_only:
            return {"chats": n_chats, "cold_wave": cold}
        for c in chats:
            c.latencies.clear()
        await asyncio.sleep(5)  # the cold wave's closing model calls settle
        pids = await stack_pids(stack)
        claude = claude_code_pids()
        before = {name: cpu_seconds(pid) for name, pid in pids.items()} | {
            "claude_code": sum(cpu_seconds(p) for p in claude)
        }
        print(f"steady {rate}/s for {seconds:.0f} s …", file=sys.stderr)
        answered = await steady(chats, rate, seconds, rng)
        after = {name: cpu_seconds(pid) for name, pid in pids.items()} | {
            "claude_code": sum(cpu_seconds(p) for p in claude)
        }
        steady_ms = [x for c in chats for x in c.latencies]
        for c in chats:
            c.latencies.clear()
        print("burst …", file=sys.stderr)
        started = time.perf_counter()
        await asyncio.gather(*(c.send(f"{c.term.chat_id} burst") for c in chats))
        await asyncio.gather(*(c.drained() for c in chats))
        burst = {"drain_s": round(time.perf_counter() - started, 2), **summary([x for c in chats for x in c.latencies])}
        await asyncio.sleep(5)
        memory = await asyncio.to_thread(idle_memory_mib, stack)
        for c in chats:
            c.close()
    for container in stack.containers():
        await asyncio.to_thread(container.remove, force=True)
    await asyncio.sleep(10)
    return {
        "chats": n_chats,
        "cold_wave": cold,
        "steady": {"rate_per_s": rate, "seconds": seconds, "messages": answered, **summary(steady_ms)},
        "burst": burst,
        "cpu_s_per_message": {k: round((after[k] - before[k]) / max(1, answered), 3) for k in before},
        "idle_container_memory_mib": {"median": statistics.median(memory) if memory else None, "n": len(memory)},
        "idle_stack": await idle_stack(stack, 30.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="messages per second over all chats")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the steady phase")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--cold-only", action="store_true", help="stop after the cold wave")
    parser.add_argument(
        "--runner",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [runner] setting for this run, e.g. parallel_starts=4 (repeatable)",
    )
    args = parser.parse_args()
    runner = "\n".join([f"max_containers = {args.chats}", *(s.replace("=", " = ", 1) for s in args.runner)])
    with tempfile.TemporaryDirectory(prefix="clawden-scale-") as tmp:
        stack = start_stack(Path(tmp) / "home", ready_timeout=180, runner=runner)
        try:
            result = asyncio.run(measure(stack, args.chats, args.rate, args.seconds, args.cold_only))
        finally:
            stack.stop()
    keep(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
