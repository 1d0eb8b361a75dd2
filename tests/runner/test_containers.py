"""The container run spec is hardened and names its session, without touching Docker; and a missing image is never
pulled (with Docker)."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import docker
import pytest

from clawden.agentcontainer import PROJECT_SETTINGS
from services.runner.containers import LABEL_INSTALL, ContainerSpec, Docker, ImageMissing, shares
from tests.registry import counting_registry


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


@pytest.mark.docker
async def test_a_missing_image_is_said_and_never_pulled(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    """docker-py's `containers.run` pulls an image it does not find, and a check just before it leaves a gap. The
    image here names a registry on loopback that only counts its callers: nothing may call it."""
    install = f"t{secrets.token_hex(4)}"
    engine = Docker(install)
    with counting_registry() as (image, callers):
        made = dataclasses.replace(spec(tmp_path), image=image, install_id=install)
        binds = (made.session_dir, made.group_dir / PROJECT_SETTINGS, made.claude_home, made.cache_dir, tmp_path / "gw")
        for folder in binds:  # the engine checks every bind's source before it looks for the image
            folder.mkdir(parents=True)
        try:
            with pytest.raises(ImageMissing, match=f"agent image {image} is missing; build it with"):
                await engine.start(made)
        finally:
            engine.close()
    assert callers == []
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={install}"})
