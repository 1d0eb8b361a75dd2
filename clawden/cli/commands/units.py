"""`clawden units install|uninstall|show`: Clawden as systemd units (system or user) or launchd agents."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from clawden import config as config_mod
from clawden.cli import units


def _mode(args: argparse.Namespace) -> units.Mode:
    mode: units.Mode = args.mode or units.default_mode()
    return mode


def _install(args: argparse.Namespace) -> tuple[config_mod.Config, units.Install]:
    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    channels = [b.removeprefix("channel@") for b in config_mod.configured_bridges(cfg)]
    return cfg, units.discover(cfg, _mode(args), channels)


def _needs_root(mode: units.Mode, dry_run: bool, verb: str, home: str) -> None:
    if mode == "system" and not dry_run and os.geteuid() != 0:
        where = f"--home {home} " if home else ""
        raise units.UnitsError(
            f"system units live in {units.SYSTEM_UNIT_DIR}, which needs root: "
            f"sudo {sys.executable} -m clawden {where}units {verb} --system "
            "(or use user units: --user)"
        )


def cmd_install(args: argparse.Namespace) -> int:
    cfg, inst = _install(args)
    _needs_root(inst.mode, args.dry_run, "install", cfg.home)
    folder = units.unit_dir(inst.mode, inst.user_home)
    plan = units.install_plan(inst, folder, units.identities(cfg), now=args.now)
    units.apply(plan, print, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    ctl = "systemctl" + (" --user" if inst.mode == "user" else "")
    if inst.mode == "launchd":
        print(
            f"installed: launchctl print gui/{inst.uid}/{units.label('router')} shows a service; "
            f"logs are in {cfg.path('logs')}"
        )
    else:
        if not args.now:
            print(f"installed: start it with `{ctl} start {units.TARGET}`")
        print(
            f"status: `{ctl} status 'clawden*'`; logs: `journalctl{' --user' if inst.mode == 'user' else ''} "
            "-u 'clawden*' -f`"
        )
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    mode = _mode(args)
    _needs_root(mode, args.dry_run, "uninstall", "")  # removing needs no home
    folder = units.unit_dir(mode, Path.home())
    plan = units.uninstall_plan(mode, folder, os.getuid())
    if not plan:
        print(f"no Clawden units in {folder}")
        return 0
    units.apply(plan, print, dry_run=args.dry_run)
    if mode == "user" and not args.dry_run:
        print(f"linger stays as it was (`loginctl disable-linger {os.environ.get('USER', '<you>')}` turns it off)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _, inst = _install(args)
    folder = units.unit_dir(inst.mode, inst.user_home)
    files = units.launchd_plists(inst) if inst.mode == "launchd" else units.systemd_units(inst)
    for i, unit in enumerate(files):
        print(("\n" if i else "") + f"# ---- {folder / unit.name}")
        print(unit.text, end="")
    return 0


def _run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except units.UnitsError as exc:
            print(f"clawden units: {exc}", file=sys.stderr)
            return 1

    return run


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("units", help="run Clawden as systemd units or launchd agents (install, uninstall, show)")
    verbs = p.add_subparsers(dest="units_command", required=True)

    def modes(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--user",
            dest="mode",
            action="store_const",
            const="user",
            help="systemd user units in ~/.config/systemd/user (default when not root)",
        )
        group.add_argument(
            "--system",
            dest="mode",
            action="store_const",
            const="system",
            help="systemd system units in /etc/systemd/system (default as root)",
        )
        group.add_argument(
            "--launchd",
            dest="mode",
            action="store_const",
            const="launchd",
            help="launchd agents in ~/Library/LaunchAgents (default on macOS)",
        )
        parser.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
        # Also accepted after the verb; SUPPRESS keeps `clawden --home H units ...` working.
        parser.add_argument(
            "--home", default=argparse.SUPPRESS, help="Clawden home (default: $CLAWDEN_HOME or ~/.clawden)"
        )

    install = verbs.add_parser("install", help="write the units for this install, enable them (and linger)")
    modes(install)
    install.add_argument(
        "--now",
        action="store_true",
        help="also start them, and say which did not start and why (a bridge that did not start fails nothing)",
    )
    install.set_defaults(func=_run(cmd_install))

    uninstall = verbs.add_parser("uninstall", help="stop, disable and remove Clawden's units")
    modes(uninstall)
    uninstall.set_defaults(func=_run(cmd_uninstall))

    show = verbs.add_parser("show", help="print the units as `install` would write them")
    modes(show)
    show.set_defaults(func=_run(cmd_show))
