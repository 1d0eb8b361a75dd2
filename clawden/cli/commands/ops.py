"""`clawden status|doctor|logs`: is it running, is it healthy, what did it say."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clawden import config as config_mod

if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _cfg(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def _quiet_bus() -> None:
    """The bus logs each failed connect attempt for services' journals; here the report says it once."""
    logging.getLogger("clawden.bus").setLevel(logging.CRITICAL)


def cmd_status(args: argparse.Namespace) -> int:
    from clawden.cli.status import gather, healthy, render
    from clawden.owner import Unreachable

    _quiet_bus()
    try:
        report = asyncio.run(gather(_cfg(args)))
    except Unreachable as exc:  # said on stderr even with --json: stdout carries only a report
        print(f"clawden: {exc}\n  fix: {exc.fix}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if healthy(report) else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from clawden.cli.doctor import diagnose, exit_code, render

    _quiet_bus()
    results = asyncio.run(diagnose(_cfg(args)))
    if args.json:
        print(
            json.dumps(
                [{"check": name, "status": r.status, "detail": r.detail, "fix": r.fix} for name, r in results], indent=2
            )
        )
    else:
        print(render(results))
    return exit_code(results)


def cmd_logs(args: argparse.Namespace) -> int:
    from clawden.cli import logview

    try:
        service = logview.canonical(args.service) if args.service else None
    except ValueError as exc:
        print(f"clawden: {exc}", file=sys.stderr)
        return 2
    scope = None if args.files else logview.installed_scope()
    if scope is not None:
        command = logview.journal_command(scope, service, lines=args.lines, follow=args.follow, session=args.session)
        try:
            return subprocess.run(command, check=False).returncode
        except FileNotFoundError:
            print("clawden: the units are installed but journalctl is missing", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
    home = Path(args.home).expanduser() if args.home else config_mod.default_home()
    if problem := config_mod.home_problem(home, bool(args.home)):
        print(f"clawden: {problem}", file=sys.stderr)
        return 2
    logs = _cfg(args).path("logs")
    try:
        logview.read_files(logs, service, lines=args.lines, session=args.session, follow=args.follow, out=sys.stdout)
    except FileNotFoundError as exc:
        print(f"clawden: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of lines")
    return value


def register(sub: Sub) -> None:
    st = sub.add_parser(
        "status",
        help="running services, their requests, containers, backlogs, approvals",
        description="Every service instance that answers over NATS, with version, uptime, pid and "
        "per-endpoint request stats; the runner's containers; each durable's backlog; "
        "pending approvals; bridges' failed deliveries. Exit 1 when a service is down.",
    )
    st.add_argument("--json", action="store_true", help="print the whole report as JSON")
    st.set_defaults(func=cmd_status)

    doc = sub.add_parser(
        "doctor",
        help="check Docker, the image, NATS, keys, the CA, credentials, channels, disk",
        description="Each check prints ok, WARN or FAIL with a fix; exit 1 when any failed.",
    )
    doc.add_argument("--json", action="store_true", help="print the results as JSON")
    doc.set_defaults(func=cmd_doctor)

    logs = sub.add_parser(
        "logs",
        help="show (and follow) the services' logs",
        description="journalctl for the clawden-* units when they are installed; otherwise the "
        "files in <home>/logs that `clawden up` writes, every service interleaved by "
        "time when none is named.",
    )
    logs.add_argument(
        "service",
        nargs="?",
        help="router, runner, vault, scheduler, approvals, webhooks, web, nats or channel@<name> (default: all)",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--session", help="only lines about this session id")
    logs.add_argument("-n", "--lines", type=_count, default=50, help="how many of the last lines (default 50)")
    logs.add_argument("--files", action="store_true", help="read <home>/logs even where units are installed")
    logs.set_defaults(func=cmd_logs)
