"""`clawden groups packages add|remove|list <group>` and `clawden groups restart <group> [--rebuild]`: the
Debian packages, npm packages and Python wheels a group's agents get, in an image of the group's own
(`clawden-agent:<group>-<hash>`, clawden/groupimage.py) built on the runner's image with no network. The
router keeps the image's tag as the group's image, so the runner uses it at the next container start;
`restart` applies it now. A failed build changes nothing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawden import config as config_mod
from clawden import control, groupimage, packagespec
from clawden.bus.ctl import router as ctl
from clawden.bus.ctl import runner as runner_api
from clawden.cli.commands._output import show, table
from clawden.packagespec import Packages

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def asked(args: argparse.Namespace) -> Packages:
    packages = Packages(apt=tuple(args.apt), npm=tuple(args.npm), pip=tuple(args.pip))
    if packages.empty():
        raise control.ControlError("name a package: --apt NAME, --npm NAME or --pip NAME (each may repeat)")
    if why := packagespec.problem(packages):
        raise control.ControlError(why)
    return packages


def _apply(args: argparse.Namespace, change: Callable[[Packages], Packages]) -> tuple[str, str, Packages]:
    """Build the group's image with its packages changed and make it the group's; (group, image, packages)."""
    cfg = _config(args)
    group = control.run(cfg, ctl.GROUPS_GET, ctl.GroupGet(name=args.group))
    setting = group.container.image or ""
    try:
        tag, packages, _built = groupimage.rebuild(group.name, setting, cfg.runner.image, change, log=_quiet(args))
    except groupimage.BuildError as exc:
        raise control.ControlError(f"{exc}; agent group {group.name} keeps {setting or cfg.runner.image}") from exc
    image = "" if tag == cfg.runner.image else tag  # "" clears the setting: the runner's image again
    if image != setting:
        update = ctl.GroupUpdate(name=group.name, container=ctl.ContainerSettings(image=image))
        control.run(cfg, ctl.GROUPS_UPDATE, update)
    return group.name, tag, packages


def _quiet(args: argparse.Namespace) -> groupimage.Log:
    return print if getattr(args, "verbose", False) else (lambda _line: None)


def packages_add(args: argparse.Namespace) -> int:
    wanted = asked(args)
    group, tag, packages = _apply(args, lambda have: have.plus(wanted))
    print(f"agent group {group} runs {tag} ({packages.words()}) from its next container start;")
    print(f"`clawden groups restart {group}` applies it now")
    return 0


def packages_remove(args: argparse.Namespace) -> int:
    unwanted = asked(args)
    group, tag, packages = _apply(args, lambda have: have.minus(unwanted))
    print(f"agent group {group} runs {tag} ({packages.words()}) from its next container start")
    return 0


def packages_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    group = control.run(cfg, ctl.GROUPS_GET, ctl.GroupGet(name=args.group))
    image = group.container.image or cfg.runner.image
    packages = groupimage.group_packages(image, group.name)
    rows = [(kind, name) for kind in packagespec.KINDS for name in getattr(packages, kind)]

    def render(data: dict[str, Any]) -> str:
        if not rows:
            return f"agent group {data['group']} runs {data['image']}, with no packages of its own"
        return f"agent group {data['group']} runs {data['image']}\n" + table(rows, ("KIND", "PACKAGE"))

    data = {"group": group.name, "image": image, "apt": packages.apt, "npm": packages.npm, "pip": packages.pip}
    return show(args, data, render)


def browser_enable(args: argparse.Namespace) -> int:
    """The group's image with Debian's Chromium and Playwright, and `clawden-browse` (clawden/browse.py)."""
    group, tag, _packages = _apply(args, lambda have: have.plus(packagespec.BROWSER))
    print(f"agent group {group} runs {tag}, with a browser (clawden-browse URL), from its next container start;")
    print(f"`clawden groups restart {group}` applies it now")
    return 0


def browser_disable(args: argparse.Namespace) -> int:
    group, tag, packages = _apply(args, lambda have: have.minus(packagespec.BROWSER))
    print(f"agent group {group} runs {tag} ({packages.words()}), with no browser, from its next container start")
    return 0


def groups_restart(args: argparse.Namespace) -> int:
    """Stop the group's running containers (their conversations are kept), so the next message starts each
    on the group's current image and settings; `--rebuild` first builds its image on the current base."""
    cfg = _config(args)
    name = args.group
    if args.rebuild:
        name, tag, packages = _apply(args, lambda have: have)
        print(f"agent group {name} runs {tag} ({packages.words()})")
    else:
        name = control.run(cfg, ctl.GROUPS_GET, ctl.GroupGet(name=name)).name
    # Every runner: the group's sessions may be on any of them.
    answers = control.run_all(cfg, runner_api.RESTART, runner_api.Restart(agent_group=name), timeout=60.0)
    failed = {rid: a for rid, a in answers.items() if isinstance(a, control.ControlError)}
    if failed and len(failed) == len(answers):
        raise next(iter(failed.values()))
    stopped = sum(a.stopped for a in answers.values() if not isinstance(a, control.ControlError))
    print(f"agent group {name}: {stopped} container(s) stopped; each conversation continues at its next message")
    for rid, exc in failed.items():
        print(f"runner {rid}: not restarted: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _kinds(p: argparse.ArgumentParser) -> None:
    p.add_argument("group", help="the agent group")
    p.add_argument("--apt", action="append", default=[], metavar="NAME", help="a Debian package (repeat for more)")
    p.add_argument("--npm", action="append", default=[], metavar="NAME", help="an npm package (needs nodejs and npm)")
    p.add_argument("--pip", action="append", default=[], metavar="NAME", help="a Python package, as NAME or NAME==VER")
    p.add_argument("--verbose", action="store_true", help="show what is fetched and the build's output")


def register_under_groups(groups: Sub) -> None:
    """`packages`, `browser` and `restart` under `clawden groups` (not at the top: no `register`)."""
    p = groups.add_parser("packages", help="packages in a group's own image: add, remove, list")
    verbs = p.add_subparsers(dest="packages_verb", metavar="VERB", required=True)
    v = verbs.add_parser("list", help="the group's image and the packages it adds")
    v.add_argument("group", help="the agent group")
    v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    v.set_defaults(func=packages_list)
    v = verbs.add_parser(
        "add",
        help="build the group's image with these packages too (no network in the build)",
        description="The host gathers the packages (Debian ones with their dependencies) and builds"
        " clawden-agent:<group>-<hash> on the runner's image with --network none. Unchanged: nothing is built.",
    )
    _kinds(v)
    v.set_defaults(func=packages_add)
    v = verbs.add_parser("remove", help="build the group's image without these packages")
    _kinds(v)
    v.set_defaults(func=packages_remove)
    p = groups.add_parser("browser", help="a browser in the group's image: enable, disable")
    verbs = p.add_subparsers(dest="browser_verb", metavar="VERB", required=True)
    for verb, func, text in (
        ("enable", browser_enable, "build the group's image with Chromium and Playwright (through the vault)"),
        ("disable", browser_disable, "build the group's image without them"),
    ):
        v = verbs.add_parser(verb, help=text)
        v.add_argument("group", help="the agent group")
        v.add_argument("--verbose", action="store_true", help="show what is fetched and the build's output")
        v.set_defaults(func=func)
    v = groups.add_parser("restart", help="stop the group's containers so the next message uses its current image")
    v.add_argument("group", help="the agent group")
    v.add_argument("--rebuild", action="store_true", help="build the group's image on the current base first")
    v.add_argument("--verbose", action="store_true", help="show the build's output")
    v.set_defaults(func=groups_restart)
