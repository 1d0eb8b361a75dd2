"""The launchd plists parse, and carry what launchd needs with absolute paths and the right types."""

from __future__ import annotations

import dataclasses
import plistlib
from pathlib import Path
from typing import Any

import pytest

from clawden.cli import units
from tests.units.conftest import install_for


def launchd(home: Path) -> units.Install:
    return dataclasses.replace(install_for(home, "user"), mode="launchd")


def plists(home: Path) -> dict[str, dict[str, Any]]:
    return {p.name: plistlib.loads(p.text.encode()) for p in units.launchd_plists(launchd(home))}


def test_every_service_the_server_and_each_bridge_get_a_plist(tmp_path: Path) -> None:
    assert sorted(plists(tmp_path / "home")) == sorted(
        [
            "dev.clawden.nats.plist",
            *(f"dev.clawden.{s}.plist" for s in units.SERVICES),
            "dev.clawden.webhooks.plist",
            "dev.clawden.web.plist",
            "dev.clawden.channel.telegram.plist",
        ]
    )


@pytest.mark.parametrize(
    "name",
    [
        "dev.clawden.nats.plist",
        "dev.clawden.router.plist",
        "dev.clawden.runner.plist",
        "dev.clawden.channel.telegram.plist",
        "dev.clawden.webhooks.plist",
        "dev.clawden.web.plist",
    ],
)
def test_a_plist_names_absolute_paths_restarts_on_failure_and_logs_into_the_home(tmp_path: Path, name: str) -> None:
    home = tmp_path / "home"
    job = plists(home)[name]
    assert job["Label"] == name.removesuffix(".plist")
    argv = job["ProgramArguments"]
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert Path(argv[0]).is_absolute() and Path(argv[0]).exists()
    assert job["RunAtLoad"] is True
    assert job["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(job["ThrottleInterval"], int) and job["ThrottleInterval"] >= 1
    env = job["EnvironmentVariables"]
    assert isinstance(env, dict) and env["CLAWDEN_HOME"] == str(home)  # launchd expands no $HOME
    log = f"{home}/logs/{name.removeprefix('dev.clawden.').removesuffix('.plist').replace('.', '-')}.log"
    assert job["StandardOutPath"] == job["StandardErrorPath"] == log
    assert job["WorkingDirectory"] == str(home)


def test_the_bridge_plist_runs_that_bridge(tmp_path: Path) -> None:
    argv = plists(tmp_path / "home")["dev.clawden.channel.telegram.plist"]["ProgramArguments"]
    assert argv[1:] == ["-P", "-m", "clawden", "run", "channel@telegram"]


def test_a_path_a_unit_file_cannot_carry_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(units.UnitsError, match="plainer path"):
        units.launchd_plists(launchd(tmp_path / "my home & more"))
