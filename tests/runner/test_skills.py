"""Skills and tuning in a group's containers: which skills on the host a group gets (links and bad names
never), where they are mounted, and the tuning the agent runner reads from its environment."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from clawden import skills
from clawden.agentcontainer import Tuning
from clawden.bus import events as ev
from services.runner.containers import group_run
from tests.runner.test_containers import spec
from tests.runner.test_group_settings import config


def skill(folder: Path, name: str, description: str = "") -> Path:
    where = folder / "skills" / name
    where.mkdir(parents=True)
    (where / "SKILL.md").write_text(f"---\nname: {name}\ndescription: {description}\n---\nSteps.\n")
    return where


def test_a_groups_skills_are_the_global_ones_and_its_own_its_own_first(tmp_path: Path) -> None:
    shared, group = tmp_path / "global", tmp_path / "work"
    skill(shared, "weather", "Global weather")
    skill(shared, "tides", "Tide tables")
    own = skill(group, "weather", "The group's own weather")

    found = skills.available(shared, group)

    assert sorted(found) == ["tides", "weather"]
    assert (found["weather"].source, found["weather"].scope, found["weather"].description) == (
        own,
        "group",
        "The group's own weather",
    )
    assert found["tides"].scope == "global"


def test_links_bad_names_and_folders_without_skill_md_are_not_skills(tmp_path: Path) -> None:
    group, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    skill(group, "fine")
    (group / "skills" / "Not-A-Name").mkdir()
    (group / "skills" / "Not-A-Name" / "SKILL.md").write_text("x")
    (group / "skills" / "empty").mkdir()
    secret = skill(elsewhere, "secret")
    os.symlink(secret, group / "skills" / "linked")  # an agent's link to a folder of the host's
    (group / "skills" / "manifest-link").mkdir()
    os.symlink(secret / "SKILL.md", group / "skills" / "manifest-link" / "SKILL.md")

    assert [s.name for s in skills.found(group, "group")] == ["fine"]


def test_a_linked_skills_folder_gives_nothing(tmp_path: Path) -> None:
    skill(tmp_path / "elsewhere", "secret")
    (tmp_path / "work").mkdir()
    os.symlink(tmp_path / "elsewhere" / "skills", tmp_path / "work" / "skills")
    assert skills.found(tmp_path / "work", "group") == []
    assert skills.found(tmp_path / "nowhere", "group") == []


def test_the_setting_picks_all_or_the_named_ones(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        skill(tmp_path / "global", name)
    found = skills.available(tmp_path / "global", tmp_path / "work")
    assert [s.name for s in skills.chosen(found, None)] == ["a", "b", "c"]
    assert [s.name for s in skills.chosen(found, ("c", "a", "gone"))] == ["a", "c"]
    assert skills.chosen(found, ()) == []


def test_a_description_comes_from_the_front_matter_only(tmp_path: Path) -> None:
    (tmp_path / "SKILL.md").write_text('---\nname: x\ndescription: "Quoted words"\n---\ndescription: not this\n')
    assert skills.description(tmp_path / "SKILL.md") == "Quoted words"
    (tmp_path / "SKILL.md").write_text("description: no front matter\n")
    assert skills.description(tmp_path / "SKILL.md") == ""
    assert skills.description(tmp_path / "missing.md") == ""


def test_each_enabled_skill_is_mounted_read_only_and_the_groups_skills_folder_too(tmp_path: Path) -> None:
    weather = skill(tmp_path / "shared", "weather")
    (tmp_path / "g" / "skills").mkdir(parents=True)
    run = dataclasses.replace(spec(tmp_path), skills=(("weather", weather),)).run_kwargs()
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in run["mounts"]}
    assert mounts["/workspace/skills/.claude/skills/weather"] == (str(weather), True)
    assert mounts["/workspace/agent/skills"] == (str(tmp_path / "g" / "skills"), True)


def test_the_tuning_reaches_the_agent_runners_environment_and_unset_stays_out(tmp_path: Path) -> None:
    tuned = Tuning(max_turns=7, turn_budget=90.5, effort="low", max_messages_per_prompt=5, assistant_name="Pip")
    plain = spec(tmp_path)
    env = dataclasses.replace(plain, tuning=tuned).environment()
    assert {k: v for k, v in env.items() if k.startswith("CLAWDEN_") and k[8:] in _TUNED} == {
        "CLAWDEN_MAX_TURNS": "7",
        "CLAWDEN_TURN_BUDGET": "90.5",
        "CLAWDEN_EFFORT": "low",
        "CLAWDEN_MAX_MESSAGES_PER_PROMPT": "5",
        "CLAWDEN_ASSISTANT_NAME": "Pip",
    }
    assert not _TUNED & {k[8:] for k in plain.environment()}


_TUNED = {"MAX_TURNS", "TURN_BUDGET", "EFFORT", "MAX_MESSAGES_PER_PROMPT", "ASSISTANT_NAME"}


def test_the_runner_uses_sound_tuning_and_refuses_what_is_out_of_bounds(tmp_path: Path) -> None:
    sent = ev.GroupSettings(effort="high", max_messages_per_prompt=5, assistant_name="Pip", skills=("weather",))
    run = group_run("work", sent, config(tmp_path))
    assert (run.effort, run.max_messages_per_prompt, run.assistant_name, run.skills) == ("high", 5, "Pip", ("weather",))

    bad = ev.GroupSettings(effort="fast", max_messages_per_prompt=500, assistant_name="<x>", skills=("../up",))
    run = group_run("work", bad, config(tmp_path))
    assert (run.effort, run.max_messages_per_prompt, run.assistant_name, run.skills) == ("", 0, "", None)
    assert len(run.refused) == 4
