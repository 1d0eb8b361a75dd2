"""What a group's MCP server costs, with a whole Clawden (`clawden up`, real containers, the real Claude Code
CLI) against the fake model: the first reply of a new chat (its container starts) without and with a stdio
MCP server in the group (tests/fakes/mcp_server.py, run inside the container), and a warm turn in which the
model calls the server's tool (its HTTPS request through the vault to a loopback site) against a warm turn
without a tool call.

    .venv/bin/python -m bench.mcp [--cold 4] [--warm 10] [--out bench/results/mcp.json]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import keep
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.fakes.anthropic import ToolCall

SITE = "tickets.fake.test"
SERVER = Path(__file__).resolve().parent.parent / "tests" / "fakes" / "mcp_server.py"
TOOL = "mcp__tickets__lookup_ticket"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 1),
        "min_ms": round(ordered[0], 1),
        "max_ms": round(ordered[-1], 1),
    }


async def timed(term: Terminal, text: str) -> tuple[float, str]:
    start = time.perf_counter()
    reply = await term.ask(text, timeout=180)
    return (time.perf_counter() - start) * 1000, reply.session_id


async def cold(stack: Stack, label: str, n: int) -> list[float]:
    """The first reply of `n` new chats, one after another (each starts its container)."""
    out = []
    for i in range(n):
        async with Terminal(stack, f"{label}-{i}") as term:
            out.append((await timed(term, f"hello {label} {i}"))[0])
    return out


async def warm(stack: Stack, n: int, *, tool: bool) -> list[float]:
    out = []
    async with Terminal(stack, f"warm-{'tool' if tool else 'plain'}") as term:
        first = await term.ask("first", timeout=180)  # the container is up and the conversation started
        for i in range(n):
            # A reply can come before its turn's closing model call: a script set then would answer that call.
            await stack.wait_until_idle(first.session_id, timeout=120)
            if tool:  # Claude Code loads a deferred MCP tool once the model searches for it
                stack.fake.script(
                    ToolCall("ToolSearch", {"query": f"select:{TOOL}", "max_results": 1}),
                    ToolCall(TOOL, {"id": str(i)}),
                )
            out.append((await timed(term, f"turn {i}"))[0])
            if tool:
                assert stack.fake.pending_script == 0, "the model's script was not used"
    return out


def add_server(stack: Stack) -> None:
    group = stack.home / "groups" / "main"
    group.mkdir(parents=True, exist_ok=True)
    shutil.copy(SERVER, group / "mcp_server.py")
    command = (
        "groups",
        "mcp",
        "add",
        "main",
        "tickets",
        "--command",
        "python3",
        "--arg",
        "/workspace/agent/mcp_server.py",
    )
    subprocess.run(
        [sys.executable, "-m", "clawden", *command, "--env", f"TICKETS_API=https://{SITE}", "--stub", "TICKETS_TOKEN"],
        env=stack.env(),
        check=True,
        capture_output=True,
    )


async def measure(stack: Stack, n_cold: int, n_warm: int) -> dict[str, Any]:
    print("cold, no MCP server", file=sys.stderr)
    without = await cold(stack, "cold-plain", n_cold)
    print("warm, no tool call", file=sys.stderr)
    plain = await warm(stack, n_warm, tool=False)
    await asyncio.to_thread(add_server, stack)
    print("cold, one stdio MCP server", file=sys.stderr)
    with_server = await cold(stack, "cold-mcp", n_cold)
    print("warm, a tool call to it", file=sys.stderr)
    tool = await warm(stack, n_warm, tool=True)
    reached = sum(1 for r in stack.fake.requests if r.headers.get("host") == SITE)
    return {
        "machine": f"{platform.machine()} {platform.system()}",
        "cold_without_mcp": summary(without),
        "cold_with_one_stdio_mcp": summary(with_server),
        "warm_turn_plain": summary(plain),
        "warm_turn_with_mcp_tool_call": summary(tool),
        "tool_requests_upstream": reached,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=4, help="new chats each way (default 4)")
    parser.add_argument("--warm", type=int, default=10, help="warm turns each way (default 10)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/mcp.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clawden-bench-") as tmp:
        stack = start_stack(Path(tmp) / "home", sites=(SITE,), runner="max_containers = 16")
        try:
            result = asyncio.run(measure(stack, args.cold, args.warm))
        finally:
            stack.stop()
    keep(result, args.out, show=False)
    for key in ("cold_without_mcp", "cold_with_one_stdio_mcp", "warm_turn_plain", "warm_turn_with_mcp_tool_call"):
        s = result[key]
        print(f"{key}: median {s['median_ms']} ms (min {s['min_ms']}, max {s['max_ms']}, n={s['n']})")
    print(f"tool requests that reached the upstream through the vault: {result['tool_requests_upstream']}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
