"""The launchd plists parse, and carry what launchd needs with absolute paths and the right types."""

from __future__ import annotations

import dataclasses
import plistlib
from pathlib import Path
from typing import Any

import pytest

from clawden import runtime
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


def test_the_bridge_plist_is_started_when_its_key_file_changes_and_no_other_watches_a_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    jobs = plists(home)
    assert jobs["dev.clawden.channel.telegram.plist"]["WatchPaths"] == [f"{home}/keys/telegram"]
    assert [name for name, job in jobs.items() if "WatchPaths" in job] == ["dev.clawden.channel.telegram.plist"]


def test_a_watched_path_that_is_not_absolute_is_refused(tmp_path: Path) -> None:
    [bridge] = [p for p in units.launchd_plists(launchd(tmp_path / "home")) if "channel.telegram" in p.name]
    relative = bridge.text.replace(f"<string>{tmp_path}/home/keys/telegram</string>", "<string>keys/telegram</string>")
    assert relative != bridge.text
    with pytest.raises(units.UnitsError, match="WatchPaths must be a list of absolute paths"):
        units.check_plist(dataclasses.replace(bridge, text=relative))


def test_a_path_a_unit_file_cannot_carry_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(units.UnitsError, match="plainer path"):
        units.launchd_plists(launchd(tmp_path / "my home & more"))


def test_a_service_that_cannot_run_as_configured_stays_down_under_launchd(tmp_path: Path) -> None:
    """launchd restarts any exit but 0 (KeepAlive SuccessfulExit=false) and cannot be told to leave 78 down, as
    systemd's RestartPreventExitStatus=78 does: so each service's plist says it runs under launchd, and there a
    service that cannot run as configured exits 0 (a refused token is not asked again every ThrottleInterval)."""
    jobs = plists(tmp_path / "home")
    services = [name for name in jobs if name != "dev.clawden.nats.plist"]
    assert all(jobs[name]["EnvironmentVariables"]["CLAWDEN_SUPERVISOR"] == "launchd" for name in services)
    assert "CLAWDEN_SUPERVISOR" not in jobs["dev.clawden.nats.plist"].get("EnvironmentVariables", {})

    launchd_env = {"CLAWDEN_SUPERVISOR": "launchd"}
    assert runtime.exit_code(runtime.EX_CONFIG, launchd_env) == 0
    assert runtime.exit_code(runtime.EX_RESTART, launchd_env) == runtime.EX_RESTART  # restarted, as it asks
    assert runtime.exit_code(1, launchd_env) == 1  # a crash is restarted
    assert runtime.exit_code(runtime.EX_CONFIG, {}) == runtime.EX_CONFIG  # systemd and `clawden up` see 78
