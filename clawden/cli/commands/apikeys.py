"""`clawden api-keys create|list|revoke`: the Bearer keys of the vault's HTTP API (`[vault] api_listen`).

A key is printed once, when it is made; the vault keeps only its sha256, so a lost key is revoked and
replaced, never shown again."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from clawden import config as config_mod
from clawden import control
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as ctl
from clawden.cli.commands._output import table

if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _cfg(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def _when(at: float | None) -> str:
    return "-" if at is None else dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")


def cmd_create(args: argparse.Namespace) -> int:
    made = control.run(_cfg(args), ctl.API_KEYS_CREATE, ctl.Named(name=args.name))
    print(f"API key {made.info.name} (shown once; the vault keeps only its hash):")
    print(made.key)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    keys = control.run(_cfg(args), ctl.API_KEYS_LIST, Nothing()).keys
    if not keys:
        print("no API keys: `clawden api-keys create <name>`")
        return 0
    rows = [[k.name, k.prefix + "…", _when(k.created_at), _when(k.last_used_at), _when(k.revoked_at)] for k in keys]
    print(table(rows, ["NAME", "KEY", "CREATED", "LAST USED", "REVOKED"]))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    key = control.run(_cfg(args), ctl.API_KEYS_REVOKE, ctl.Named(name=args.name))
    print(f"API key {key.name} revoked ({_when(key.revoked_at)}); requests with it are refused from now on")
    return 0


def register(sub: Sub) -> None:
    keys = sub.add_parser("api-keys", help="the Bearer keys of the vault's HTTP API ([vault] api_listen)")
    keys_sub = keys.add_subparsers(dest="api_keys_command", required=True, metavar="COMMAND")
    create = keys_sub.add_parser("create", help="make a key and print it once")
    create.add_argument("name", help="what the key is for (it names the actor in the audit)")
    create.set_defaults(func=cmd_create)
    keys_sub.add_parser("list", help="the keys: names, first characters, last use").set_defaults(func=cmd_list)
    revoke = keys_sub.add_parser("revoke", help="refuse a key from the next request on")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_revoke)
