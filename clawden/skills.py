"""Skills on the host, in Claude Code's layout (`<name>/SKILL.md`): `groups/global/skills/` for every
agent group and `groups/<folder>/skills/` for one. Which of them a group's containers get is the group's
`skills` setting: all of them (None), or the ones it names; a group's own skill hides a global one of
the same name."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clawden.bus.events import SKILL_NAME_PATTERN

SKILLS_DIR = "skills"  # in the global folder and in each group's folder
SKILL_FILE = "SKILL.md"
_NAME = re.compile(SKILL_NAME_PATTERN)
_DESCRIPTION = re.compile(r"^description:\s*(.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Skill:
    name: str
    source: Path  # the folder holding SKILL.md, mounted read-only as it is
    scope: Literal["global", "group"]
    description: str = ""


def found(folder: Path, scope: Literal["global", "group"]) -> list[Skill]:
    """The skills in `folder/skills/`, by name. A link anywhere below `folder` (which an agent could have
    planted in its writable group folder) or a name Claude Code would not take is skipped."""
    where = folder / SKILLS_DIR
    if where.is_symlink() or not where.is_dir():
        return []
    out = []
    for candidate in sorted(where.iterdir()):
        manifest = candidate / SKILL_FILE
        if (
            _NAME.match(candidate.name)
            and candidate.resolve() == where.resolve() / candidate.name
            and not manifest.is_symlink()
            and manifest.is_file()
        ):
            out.append(Skill(candidate.name, candidate, scope, description(manifest)))
    return out


def description(manifest: Path) -> str:
    """The `description:` of a SKILL.md's front matter ("" without one)."""
    try:
        text = manifest.read_text(encoding="utf-8", errors="replace")[:8192]
    except OSError:
        return ""
    head = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
    m = _DESCRIPTION.search(head)
    return m.group(1).strip("'\"") if m else ""


def available(global_dir: Path, group_dir: Path) -> dict[str, Skill]:
    """Every skill a group could use, by name; its own before a global one of the same name."""
    return {s.name: s for s in [*found(global_dir, "global"), *found(group_dir, "group")]}


def chosen(skills: dict[str, Skill], setting: tuple[str, ...] | None) -> list[Skill]:
    """The ones the group's setting enables, in name order; a named skill that is not there is left out."""
    return [s for name, s in sorted(skills.items()) if setting is None or name in setting]
