"""`clawden status|doctor`: is it running, and is it healthy."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
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
    from clawden.status import Unreachable, gather, healthy, render

    _quiet_bus()
    try:
        report = asyncio.run(gather(_cfg(args)))
    except Unreachable as exc:  # said on stderr even with --json: stdout carries only a report
        print(f"clawden: {exc}\n  fix: {exc.fix}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if healthy(report) else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from clawden.doctor import diagnose, exit_code, render

    _quiet_bus()
    results = asyncio.run(diagnose(_cfg(args)))
    if args.json:
        print(json.dumps([{"check": name, "status": r.status, "detail": r.detail, "fix": r.fix}
                          for name, r in results], indent=2))
    else:
        print(render(results))
    return exit_code(results)


def register(sub: Sub) -> None:
    st = sub.add_parser("status", help="running services, their requests, containers, backlogs, approvals",
                        description="Every service instance that answers over NATS, with version, uptime, pid and "
                                    "per-endpoint request stats; the runner's containers; each durable's backlog; "
                                    "pending approvals; bridges' failed deliveries. Exit 1 when a service is down.")
    st.add_argument("--json", action="store_true", help="print the whole report as JSON")
    st.set_defaults(func=cmd_status)

    doc = sub.add_parser("doctor", help="check Docker, the image, NATS, keys, the CA, credentials, channels, disk",
                         description="Each check prints ok, WARN or FAIL with a fix; exit 1 when any failed.")
    doc.add_argument("--json", action="store_true", help="print the results as JSON")
    doc.set_defaults(func=cmd_doctor)
