"""The settings the router sends for an agent group: checked before use, applied over config.toml,
and kept in runner.db so a scheduler wake (which carries none) and a restarted runner use them too."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, cast

import pytest

from clawden import sessiondb
from clawden.bus import Retry
from clawden.bus import events as ev
from clawden.config import Config, GroupConfig, ModelConfig, RunnerConfig
from clawden.runtime import ServiceContext
from services.runner.containers import Docker, GroupRun, group_folder, group_run
from services.runner.service import START_ATTEMPTS, Runner
from services.runner.sessions import SessionIndex

RUNNER = RunnerConfig(image="clawden-agent:latest", memory="2g", cpus=2.0, pids=512, idle_timeout=1800)


def config(home: Path, **groups: GroupConfig) -> Config:
    return Config(home=str(home), runner=RUNNER, model=ModelConfig(model="claude-default"), groups=groups)


def test_nothing_from_the_router_means_config_toml_then_the_runners_defaults(tmp_path: Path) -> None:
    cfg = config(tmp_path, work=GroupConfig(memory="1g", pids=128))
    assert group_run("work", None, cfg) == GroupRun(
        folder="work",
        model="claude-default",
        image="clawden-agent:latest",
        memory="1g",
        cpus=2.0,
        pids=128,
        idle_timeout=1800,
        max_turns=100,
        turn_budget=1800,
    )


def test_the_routers_setting_wins_field_by_field_over_config_toml(tmp_path: Path) -> None:
    cfg = config(tmp_path, work=GroupConfig(memory="1g", cpus=1.0, pids=128))
    sent = ev.GroupSettings(
        folder="w", model="claude-group", memory="300m", pids=200, idle_timeout=60, max_turns=7, turn_budget=120
    )
    assert group_run("work", sent, cfg) == GroupRun(
        folder="w",
        model="claude-group",
        image="clawden-agent:latest",
        memory="300m",
        cpus=1.0,
        pids=200,
        idle_timeout=60,
        max_turns=7,
        turn_budget=120,
    )


@pytest.mark.parametrize(
    ("sent", "fallback", "why"),
    [
        ({"folder": "../../etc"}, {"folder": "work"}, "folder '../../etc'"),
        ({"folder": "a/b"}, {"folder": "work"}, "folder 'a/b'"),
        ({"folder": "global"}, {"folder": "work"}, "not global"),
        ({"memory": "9999g"}, {"memory": "1g"}, "memory '9999g'"),
        ({"memory": "-1"}, {"memory": "1g"}, "memory '-1'"),
        ({"cpus": float("inf")}, {"cpus": 2.0}, "cpus inf"),
        ({"cpus": -2.0}, {"cpus": 2.0}, "cpus -2"),
        ({"pids": 10**9}, {"pids": 512}, "pids 1000000000"),
        ({"pids": -1}, {"pids": 512}, "pids -1"),
        ({"idle_timeout": float("nan")}, {"idle_timeout": 1800}, "idle timeout nan"),
        ({"idle_timeout": 0.5}, {"idle_timeout": 1800}, "idle timeout 0.5"),
        ({"image": "--privileged"}, {"image": "clawden-agent:latest"}, "image '--privileged'"),
        ({"image": "x" * 300}, {"image": "clawden-agent:latest"}, "image 'xxx"),
        ({"model": "m\nEVIL=1"}, {"model": "claude-default"}, "model 'm\\nEVIL=1'"),
        ({"max_turns": -3}, {"max_turns": 100}, "max turns -3"),
        ({"turn_budget": 1.0}, {"turn_budget": 1800}, "turn budget 1.0"),
    ],
)
def test_a_setting_out_of_bounds_is_refused_and_the_next_source_applies(
    tmp_path: Path, sent: dict[str, Any], fallback: dict[str, Any], why: str
) -> None:
    cfg = config(tmp_path, work=GroupConfig(memory="1g"))
    sound: dict[str, Any] = {"pids": 300} if "pids" not in sent else {"idle_timeout": 60}
    run = group_run("work", ev.GroupSettings(**sound, **sent), cfg)
    assert {name: getattr(run, name) for name in fallback} == fallback
    assert {name: getattr(run, name) for name in sound} == sound, "a sound field beside a bad one is used"
    assert dataclasses.replace(run, refused=()) == group_run("work", ev.GroupSettings(**sound), cfg)
    [refusal] = run.refused
    assert why in refusal


def test_more_cpus_than_the_docker_engine_has_are_refused(tmp_path: Path) -> None:
    run = group_run("work", ev.GroupSettings(cpus=8.0), config(tmp_path), engine_cpus=2)
    assert run.cpus == 2.0 and run.refused == ("cpus 8: the Docker engine has only 2",)
    assert group_run("work", ev.GroupSettings(cpus=1.5), config(tmp_path), engine_cpus=2).cpus == 1.5


def test_a_folder_that_is_a_link_out_of_groups_is_refused(tmp_path: Path) -> None:
    groups = tmp_path / "groups"
    (groups / "home").mkdir(parents=True)
    (groups / "escape").symlink_to(tmp_path)
    (groups / "sneaky").symlink_to(groups / "home")
    assert group_folder(groups, "home", "work") == (groups / "home", "")
    assert group_folder(groups, "fresh", "work") == (groups / "fresh", "")  # created at start
    for link in ("escape", "sneaky"):
        folder, why = group_folder(groups, link, "work")
        assert folder == groups / "work" and f"folder {link!r} is a link" in why


def test_the_latest_settings_survive_a_reopen_and_a_late_older_snapshot_loses(tmp_path: Path) -> None:
    index = SessionIndex.open(tmp_path / "runner.db")
    assert index.group_settings("work") is None
    assert index.set_group_settings("work", ev.GroupSettings(memory="1g", changed_at=10))
    assert not index.set_group_settings("work", ev.GroupSettings(memory="1g", changed_at=10)), "unchanged"
    assert index.set_group_settings("work", ev.GroupSettings(memory="300m", changed_at=20))
    assert not index.set_group_settings("work", ev.GroupSettings(memory="1g", changed_at=15)), "older"
    index.close()

    again = SessionIndex.open(tmp_path / "runner.db")
    assert again.group_settings("work") == ev.GroupSettings(memory="300m", changed_at=20)
    assert again.group_settings("other") is None


def runner(home: Path, index: SessionIndex) -> Runner:
    ctx = types.SimpleNamespace(config=config(home), js=None, nc=None)  # on_wake needs no bus for what is tested
    return Runner(cast(ServiceContext, ctx), cast(Docker, None), index)


def wake(n: int, group: ev.GroupSettings | None, kind: str = "chat") -> ev.Wake:
    return ev.Wake(
        session_id="s-1",
        agent_group="work",
        route=ev.Route(channel="local", chat_id="kitchen"),
        message=ev.WakeMessage(id=f"m{n}", kind=kind, text="hi"),  # type: ignore[arg-type]
        group=group,
    )


async def test_after_a_runner_restart_a_scheduler_wake_starts_with_the_routers_last_settings(tmp_path: Path) -> None:
    sent = ev.GroupSettings(folder="w", model="claude-group", memory="300m", pids=200, changed_at=5)
    first = runner(tmp_path, await SessionIndex.start(tmp_path / "data" / "runner.db"))
    await first.on_wake(wake(1, sent), cast(Any, None))
    await first.index.stop()

    again = runner(tmp_path, await SessionIndex.start(tmp_path / "data" / "runner.db"))
    await again.on_wake(wake(2, None, kind="task"), cast(Any, None))  # the scheduler knows no settings
    assert "s-1" in again.queue, "the task wake asks for a container"
    run = again.group_run("work")
    assert (run.folder, run.model, run.memory, run.pids, run.cpus) == ("w", "claude-group", "300m", 200, 2.0)
    await again.index.stop()


async def test_a_vault_away_for_longer_than_the_start_attempts_fails_no_message(tmp_path: Path) -> None:
    """A vault restarting under `clawden up` makes each start wait (`Retry`); that is no failed start, so the
    chat is never told its container could not be started, and its message waits in the queue."""
    r = runner(tmp_path, await SessionIndex.start(tmp_path / "data" / "runner.db"))
    await r.on_wake(wake(1, ev.GroupSettings(folder="w", changed_at=5)), cast(Any, None))

    async def vault_away(info: Any) -> Any:
        raise Retry("the vault did not answer", delay=0.0)

    r._vault_route = vault_away  # type: ignore[method-assign]
    for _ in range(START_ATTEMPTS + 2):
        waiting = r.queue.pop("s-1")
        await r._launch(waiting)
    assert "s-1" in r.queue and "s-1" not in r.live and not r.failures
    assert sessiondb.has_unanswered(r.queue["s-1"].folder)
    await r.index.stop()
