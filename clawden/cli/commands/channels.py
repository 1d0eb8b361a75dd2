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

    from clawden.cli.status import status

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
    counts = "  ".join(
        f"{k} {stats[k]}" for k in ("inbound", "sent", "failed", "unconfirmed", "reconnects") if k in stats
    )
    heard = f"  heard {time.time() - stats['last_alive']:.0f}s ago" if stats.get("last_alive") else ""
    # `clawden status`'s word for a bridge that runs but says it cannot do its work (survey.service_state).
    state = "degraded" if ping.get("trouble") else "running"
    return f"{state}  pid {ping.get('pid', '?')}  up {ping.get('uptime', 0):.0f}s{heard}  {counts}".rstrip()


def listing(bridges: dict[str, str], pings: dict[str, dict[str, Any]] | None) -> list[str]:
    """One line per bridge, installed or answering; under a degraded one, the trouble its ping carries (why, since
    when, what waits), as `clawden status` says it."""
    out = []
    for name in sorted(set(bridges) | set(pings or {})):
        ping = (pings or {}).get(name)
        state = describe(name, ping) if pings is not None else "unknown (NATS unreachable)"
        out.append(f"{name:<12} {bridges.get(name, 'not installed here'):<24} {state}")
        if ping is not None and "error" not in ping and ping.get("trouble"):
            out.append(f"{'':<12} {ping['trouble']}")
    if not bridges:
        out.append("no chat bridges are installed")
    return out


def cmd_list(args: argparse.Namespace) -> int:
    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    for line in listing(installed_channels(), asyncio.run(running(cfg))):
        print(line)
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    """Log a bridge in once with a password and keep only what it hands back (Matrix: token and device id)."""
    import getpass
    import sys

    from clawden.bridgeconfig import BridgeConfigError
    from clawden.cli.doctor import bridge_module

    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    if args.channel not in installed_channels():
        print(f"error: no bridge named {args.channel!r} is installed (see `clawden channels list`)", file=sys.stderr)
        return 2
    module = bridge_module(args.channel)
    if not hasattr(module, "login") or not hasattr(module, "store_login"):
        print(
            f"error: the {args.channel} bridge has no login; put its token in {cfg.keys_dir / args.channel} "
            "(mode 0600)",
            file=sys.stderr,
        )
        return 2
    if not args.homeserver or not args.user:
        print("error: --homeserver and --user are required", file=sys.stderr)
        return 2
    password = (
        sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass(f"password for {args.user}: ")
    )
    try:
        cred = asyncio.run(module.login(args.homeserver, args.user, password))
        for line in module.store_login(cfg, args.homeserver, cred):
            print(line)
    except (BridgeConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the platform refused: its words, not a traceback
        print(f"error: {args.channel} login failed: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    channels = sub.add_parser("channels", help="chat bridges: which are installed and which run")
    verbs = channels.add_subparsers(dest="channels_command", required=True)
    verbs.add_parser("list", help="installed bridges, and the running ones with their counters").set_defaults(
        func=cmd_list
    )
    login = verbs.add_parser(
        "login",
        help="log a bridge in once with a password (matrix: only its token is kept; "
        "email: both logins checked, the password kept in keys/email)",
    )
    login.add_argument("channel", help="the bridge, e.g. matrix or email")
    login.add_argument(
        "--homeserver",
        "--server",
        help="the homeserver's URL, e.g. https://matrix.example.org; for email the mail server, e.g. mail.example.org",
    )
    login.add_argument("--user", help="the bot account, e.g. @clawden:example.org, or the assistant's address")
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    login.set_defaults(func=cmd_login)
