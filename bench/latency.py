"""Inbound-to-reply latency of a whole Clawden (`clawden up`, a real container, the real Claude Code CLI)
against the fake model, for a warm session (its container runs) and a cold one (no container yet).

In the same run it times a bare Claude Code turn: the Agent SDK on the host, the same fake model, the
same two model calls per turn (the echo through a `send_message` tool, then "Done."), from the prompt
to the tool's call. Clawden's warm median over that one is what Clawden adds to Claude Code.

    .venv/bin/python -m bench.latency [--warm 50] [--cold 8] [--out bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import docker
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage, create_sdk_mcp_server, tool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "container"))
from clawden_agent.loop import BUILTIN_TOOLS, QUIET_ENV

from bench import keep
from tests.e2e.harness import LABEL_INSTALL, Stack, Terminal, start_stack

NANOCLAW_POLL_FLOOR_MS = 1000.0  # NanoClaw polls both session files every second


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "min_ms": round(ordered[0], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def timed_turn(term: Terminal, text: str) -> tuple[float, str]:
    start = time.perf_counter()
    reply = await term.ask(text, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000
    assert text in reply.text, reply.text
    return elapsed, reply.session_id


def docker_times(stack: Stack, since: float, until: float) -> dict[str, float]:
    """When Docker created and started this install's containers in the window (epoch seconds)."""
    client = docker.from_env()
    try:
        stream = client.events(
            since=int(since) - 1,
            until=int(until) + 1,
            decode=True,
            filters={"type": "container", "label": f"{LABEL_INSTALL}={stack.install_id}"},
        )
        times: dict[str, float] = {}
        for event in stream:
            at = event.get("timeNano", 0) / 1e9
            if event.get("status") in ("create", "start") and since <= at <= until:
                times.setdefault(event["status"], at)
        return times
    finally:
        client.close()


def idle_memory_mib(stack: Stack) -> list[float]:
    """Resident memory of each running agent container, as its cgroup counts it (less page cache)."""
    out = []
    for container in stack.containers():
        stats = container.stats(stream=False)["memory_stats"]
        cache = stats.get("stats", {}).get("cache", 0) or stats.get("stats", {}).get("inactive_file", 0)
        out.append(round((stats["usage"] - cache) / 2**20, 1))
    return out


async def bare_turns(fake_url: str, turns: int, work: Path) -> list[float]:
    """Milliseconds from a prompt to Claude Code's send_message call, the SDK's client kept warm."""
    called: asyncio.Queue[str] = asyncio.Queue()

    @tool("send_message", "Send a message to the chat", {"text": str})
    async def send_message(args: dict[str, str]) -> dict[str, object]:
        called.put_nowait(args["text"])
        return {"content": [{"type": "text", "text": "sent"}]}

    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    options = ClaudeAgentOptions(
        cwd=str(work),
        permission_mode="bypassPermissions",
        setting_sources=[],
        strict_mcp_config=True,
        mcp_servers={"clawden": create_sdk_mcp_server("clawden", tools=[send_message])},
        tools=BUILTIN_TOOLS,
        env={
            **QUIET_ENV,
            "ANTHROPIC_BASE_URL": fake_url,
            "ANTHROPIC_API_KEY": "sk-ant-bench",
            "CLAUDE_CONFIG_DIR": str(work / ".claude-home"),
            # With a base URL of its own, Claude Code defers MCP tools behind ToolSearch (an extra
            # model call); in the container, through the vault, it offers them at once.
            "ENABLE_TOOL_SEARCH": "false",
        },
    )
    samples: list[float] = []
    async with ClaudeSDKClient(options) as client:
        for i in range(turns + 1):  # the first turn warms it up, as Clawden's does
            text = f"bare hello {i}"
            start = time.perf_counter()
            await client.query(text)
            said = await asyncio.wait_for(called.get(), 120)
            elapsed = (time.perf_counter() - start) * 1000
            assert text in said, said
            async for message in client.receive_response():  # the closing call: the turn's end
                if isinstance(message, ResultMessage):
                    break
            if i:
                samples.append(elapsed)
    return samples


async def measure(stack: Stack, warm: int, cold: int) -> dict[str, object]:
    cold_ms: list[float] = []
    phases: dict[str, list[float]] = {"create": [], "start": [], "agent_ready": [], "reply": []}
    for i in range(cold):
        async with Terminal(stack, f"cold-{i}") as term:
            seen = len(stack.fake.requests)
            t0 = time.time()
            elapsed, session = await timed_turn(term, f"cold hello {i}")
            t_reply = t0 + elapsed / 1000
            cold_ms.append(elapsed)
            await stack.wait_until_idle(session)
        at = await asyncio.to_thread(docker_times, stack, t0, t_reply)
        first_model_call = min(r.at for r in stack.fake.requests[seen:])
        # Phases, each from the end of the one before: the runner asks Docker to create the
        # container, Docker starts it, the agent runner and Claude Code come up and send the first
        # model request (the fake answers at once), and the turn finishes with the reply on the bus.
        phases["create"].append((at["create"] - t0) * 1000)
        phases["start"].append((at["start"] - at["create"]) * 1000)
        phases["agent_ready"].append((first_model_call - at["start"]) * 1000)
        phases["reply"].append((t_reply - first_model_call) * 1000)
        for c in stack.containers():  # keep one container at a time, as a fresh chat would see
            c.remove(force=True)
        print(f"  cold {i + 1}/{cold}: {elapsed:.0f} ms", file=sys.stderr)

    warm_ms: list[float] = []
    async with Terminal(stack, "warm") as term:
        _, session = await timed_turn(term, "warm up")
        await stack.wait_until_idle(session)
        for i in range(warm):
            elapsed, session = await timed_turn(term, f"warm hello {i}")
            warm_ms.append(elapsed)
            await stack.wait_until_idle(session)
    await asyncio.sleep(2)  # let the container settle before weighing it idle
    memory = await asyncio.to_thread(idle_memory_mib, stack)
    bare = summary(await bare_turns(stack.fake.url, warm, stack.home / "bare"))
    warm_summary = summary(warm_ms)
    return {
        "warm": warm_summary,
        "bare_claude_code": bare,
        "warm_over_bare": round(warm_summary["median_ms"] / bare["median_ms"], 2),
        "cold": summary(cold_ms),
        "cold_phases_median_ms": {k: round(statistics.median(v), 1) for k, v in phases.items()},
        "idle_container_memory_mib": memory,
        "nanoclaw_floor_over_warm_median": round(NANOCLAW_POLL_FLOOR_MS / warm_summary["median_ms"], 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
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
    keep(result, args.out, show=False)
    w, c, b = (cast("dict[str, float]", result[k]) for k in ("warm", "cold", "bare_claude_code"))
    print(f"warm turn: median {w['median_ms']} ms, p95 {w['p95_ms']} ms (n={w['n']})")
    print(
        f"bare Claude Code turn: median {b['median_ms']} ms, p95 {b['p95_ms']} ms; "
        f"Clawden's warm median is {result['warm_over_bare']}x it"
    )
    print(f"cold turn: median {c['median_ms']} ms, p95 {c['p95_ms']} ms (n={c['n']})")
    print(f"cold phases (median ms): {result['cold_phases_median_ms']}")
    print(f"idle container memory (MiB): {result['idle_container_memory_mib']}")
    print(f"NanoClaw's 1000 ms poll floor is {result['nanoclaw_floor_over_warm_median']}x the warm median")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
