"""`clawden web login`: a one-time link that signs a browser in to the web service (`clawden run web`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clawden import config as config_mod
from clawden import control
from clawden.bus.ctl import web as web_ctl

if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def cmd_login(args: argparse.Namespace) -> int:
    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    user = args.user or ""  # the web service signs in the install's owner (the router's roles say who)
    link = control.run(cfg, web_ctl.LOGIN, web_ctl.LoginRequest(user=user))
    minutes = max(1, round((link.expires_at - time.time()) / 60))
    print(f"Open this link to sign in as {link.user} (it works once, for {minutes} minutes):")
    print(link.url)
    return 0


def register(sub: Sub) -> None:
    web = sub.add_parser("web", help="the browser chat and dashboard (`clawden run web`)")
    web_sub = web.add_subparsers(dest="web_command", required=True, metavar="COMMAND")
    login = web_sub.add_parser("login", help="print a one-time sign-in link")
    login.add_argument(
        "--user", help="who signs in, as <channel>:<name> (default: the owner, as `clawden roles` has it)"
    )
    login.set_defaults(func=cmd_login)
