"""`clawden groups skills list|enable|disable <group> [<skill>]`: which skills an agent group's containers
get. The setting lives with the group's settings in the router (`all`, the default, or a list); the skills
themselves are folders on this machine, `groups/global/skills/<name>/SKILL.md` and
`groups/<folder>/skills/<name>/SKILL.md`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from clawden import config as config_mod
from clawden import control, skills
from clawden.bus.ctl import router as ctl
from clawden.cli.commands._output import show, table

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

Setting = Literal["all"] | list[str]


def parse_setting(text: str) -> Setting:
    """`--skills`: `all`, `none` (or nothing), or names separated by commas."""
    if text.strip() == "all":
        return "all"
    return [] if text.strip() in ("", "none") else [n.strip() for n in text.split(",") if n.strip()]


def _config(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def _group(args: argparse.Namespace) -> tuple[ctl.GroupDetail, Setting, dict[str, skills.Skill]]:
    cfg = _config(args)
    group = control.run(cfg, ctl.GROUPS_GET, ctl.GroupGet(name=args.group))
    setting: Setting = group.container.skills if group.container.skills is not None else "all"
    return group, setting, skills.available(cfg.groups_dir / "global", cfg.groups_dir / group.folder)


def _set(args: argparse.Namespace, setting: Setting) -> ctl.Group:
    settings = ctl.ContainerSettings(skills=setting)
    return control.run(_config(args), ctl.GROUPS_UPDATE, ctl.GroupUpdate(name=args.group, container=settings))


def _describe(group: str, setting: Setting) -> str:
    if setting == "all":
        return f"agent group {group} uses every skill"
    return f"agent group {group} uses: {', '.join(setting) or 'no skills'}"


def skills_list(args: argparse.Namespace) -> int:
    group, setting, found = _group(args)
    rows: list[dict[str, Any]] = [
        {
            "name": s.name,
            "scope": s.scope,
            "enabled": setting == "all" or s.name in setting,
            "description": s.description,
        }
        for s in found.values()
    ]
    rows += [
        {"name": n, "scope": "missing", "enabled": True, "description": "not on this machine"}
        for n in (setting if setting != "all" else [])
        if n not in found
    ]

    def render(data: dict[str, Any]) -> str:
        shown = [
            (r["name"], r["scope"], "yes" if r["enabled"] else "no", r["description"][:60]) for r in data["skills"]
        ]
        listing = table(shown, ("SKILL", "FROM", "ENABLED", "DESCRIPTION")) if shown else "no skills on this machine"
        return f"{_describe(group.name, setting)}\n{listing}"

    return show(args, {"group": group.name, "setting": setting, "skills": rows}, render)


def skills_enable(args: argparse.Namespace) -> int:
    group, setting, found = _group(args)
    if args.skill not in found:
        print(f"clawden: warning: no skill {args.skill} in groups/global/skills or groups/{group.folder}/skills here")
    if setting == "all":
        print(f"{_describe(group.name, setting)}, {args.skill} among them")
        return 0
    if args.skill in setting:
        print(f"{args.skill} is already enabled; {_describe(group.name, setting)}")
        return 0
    _set(args, [*setting, args.skill])
    print(_describe(group.name, [*setting, args.skill]))
    return 0


def skills_disable(args: argparse.Namespace) -> int:
    group, setting, found = _group(args)
    if setting == "all":  # every skill here but this one, from now on a list
        if args.skill not in found:
            raise control.ControlError(
                f"no skill {args.skill} in groups/global/skills or groups/{group.folder}/skills; "
                f"see `clawden groups skills list {group.name}`"
            )
        left = [n for n in found if n != args.skill]
        _set(args, left)
        print(f"{_describe(group.name, left)} (skills added later need `clawden groups skills enable`)")
        return 0
    if args.skill not in setting:
        print(f"{args.skill} is not enabled; {_describe(group.name, setting)}")
        return 0
    left = [n for n in setting if n != args.skill]
    _set(args, left)
    print(_describe(group.name, left))
    return 0


def register(groups: Sub) -> None:
    """`skills` under `clawden groups`."""
    p = groups.add_parser("skills", help="which skills a group gets: list, enable, disable")
    verbs = p.add_subparsers(dest="skills_verb", metavar="VERB", required=True)
    for name, func, help_text in (
        ("list", skills_list, "the skills on this machine and which the group gets"),
        ("enable", skills_enable, "give the group a skill"),
        ("disable", skills_disable, "take a skill from the group"),
    ):
        v = verbs.add_parser(name, help=help_text)
        v.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        v.add_argument("group", help="the agent group")
        if name != "list":
            v.add_argument("skill", help="the skill's folder name")
        v.set_defaults(func=func)
