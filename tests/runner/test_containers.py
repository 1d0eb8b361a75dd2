"""The container run spec is hardened and names its session, without touching Docker."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.runner.containers import ContainerSpec, shares


def spec(tmp_path: Path) -> ContainerSpec:
    (tmp_path / "global").mkdir()
    return ContainerSpec(
        install_id="abc",
        agent_group="main",
        session_id="s-1",
        image="clawden-agent:latest",
        session_dir=tmp_path / "s",
        group_dir=tmp_path / "g",
        global_dir=tmp_path / "global",
        claude_home=tmp_path / "c",
        cache_dir=tmp_path / "cache",
        gateway_dir=tmp_path / "gw",
        memory="1g",
        cpus=1.5,
        pids=128,
        user="1000:1000",
    )


def test_run_spec_is_locked_down(tmp_path: Path) -> None:
    kw = spec(tmp_path).run_kwargs()
    assert kw["network_mode"] == "none"
    assert kw["read_only"] is True
    assert kw["cap_drop"] == ["ALL"]
    assert kw["security_opt"] == ["no-new-privileges:true"]
    assert (kw["mem_limit"], kw["nano_cpus"], kw["pids_limit"]) == ("1g", 1_500_000_000, 128)
    assert kw["labels"] == {
        "dev.clawden.install": "abc",
        "dev.clawden.agent-group": "main",
        "dev.clawden.session": "s-1",
    }


def test_mounts_are_only_what_the_session_needs(tmp_path: Path) -> None:
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in spec(tmp_path).run_kwargs()["mounts"]}
    assert mounts == {
        "/workspace/session": (str(tmp_path / "s"), False),
        "/workspace/agent": (str(tmp_path / "g"), False),
        "/workspace/agent/.claude": (str(tmp_path / "g" / ".claude"), True),
        "/home/agent": (str(tmp_path / "c"), False),
        "/run/clawden/cache": (str(tmp_path / "cache"), False),
        "/run/clawden/gateway": (str(tmp_path / "gw"), True),
        "/workspace/global": (str(tmp_path / "global"), True),
    }


def test_the_environment_holds_no_secret(tmp_path: Path) -> None:
    env = spec(tmp_path).environment()
    assert env["ANTHROPIC_API_KEY"] == "clawden-managed"
    assert not any("sk-" in v for v in env.values())


def test_the_container_is_told_the_placement_it_writes_under_and_an_older_spec_none(tmp_path: Path) -> None:
    older = spec(tmp_path)
    fenced = dataclasses.replace(older, runner="b", epoch=4).environment()
    assert (fenced["CLAWDEN_RUNNER"], fenced["CLAWDEN_EPOCH"]) == ("b", "4")
    assert not {"CLAWDEN_RUNNER", "CLAWDEN_EPOCH"} & set(older.environment())  # unfenced, as from an older runner


FENCED = {"CLAWDEN_RUNNER": "b", "CLAWDEN_EPOCH": "3"}


@pytest.mark.parametrize(
    ("running_env", "wanted", "shared"),
    [
        (["PATH=/bin", "CLAWDEN_RUNNER=b", "CLAWDEN_EPOCH=3"], FENCED, True),  # another instance of this runner
        (["CLAWDEN_RUNNER=b", "CLAWDEN_EPOCH=1"], FENCED, False),  # the session's before it moved away and back
        (["CLAWDEN_RUNNER=a", "CLAWDEN_EPOCH=3"], FENCED, False),
        (["PATH=/bin"], FENCED, False),  # started unfenced, by an older runner: it holds no placement
        (["PATH=/bin", "X=a=b"], {}, True),  # both unfenced, as before placements
        (["CLAWDEN_RUNNER=b", "CLAWDEN_EPOCH=3"], {}, False),
    ],
)
def test_a_running_container_is_shared_only_by_a_start_under_the_same_placement(
    running_env: list[str], wanted: dict[str, str], shared: bool
) -> None:
    assert shares(running_env, wanted) is shared
