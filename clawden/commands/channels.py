"""`clawden channels list`: the chat bridges this install can run, and which of them answer on the bus."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from clawden import config as config_mod
from clawden.registry import installed_channels


async def running(cfg: config_mod.Config) -> dict[str, dict[str, Any]] | None:
    """Each answering bridge's ping (pid, uptime, stats), by channel name; None when NATS is unreachable."""
    from nats.errors import Error as NatsError

    from clawden.status import status

    try:
        report = await status(cfg)
    except (OSError, TimeoutError, NatsError):
        return None
    return {s["name"].removeprefix("channel-"): s for s in report["services"] if s["name"].startswith("channel-")}


def describe(name: str, ping: dict[str, Any] | None) -> str:
    if ping is None:
        return "not running"
    if "error" in ping:
        return f"not answering ({ping['error']})"
    stats = ping.get("stats", {}).get(name, {})
    counts = "  ".join(f"{k} {stats[k]}" for k in ("inbound", "sent", "failed", "unconfirmed", "reconnects")
                       if k in stats)
    heard = f"  heard {time.time() - stats['last_alive']:.0f}s ago" if stats.get("last_alive") else ""
    return f"running  pid {ping.get('pid', '?')}  up {ping.get('uptime', 0):.0f}s{heard}  {counts}".rstrip()


def cmd_list(args: argparse.Namespace) -> int:
    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    bridges = installed_channels()
    pings = asyncio.run(running(cfg))
    for name in sorted(set(bridges) | set(pings or {})):
        state = describe(name, (pings or {}).get(name)) if pings is not None else "unknown (NATS unreachable)"
        print(f"{name:<12} {bridges.get(name, 'not installed here'):<24} {state}")
    if not bridges:
        print("no chat bridges are installed")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    channels = sub.add_parser("channels", help="chat bridges: which are installed and which run")
    verbs = channels.add_subparsers(dest="channels_command", required=True)
    verbs.add_parser("list", help="installed bridges, and the running ones with their counters").set_defaults(
        func=cmd_list)
