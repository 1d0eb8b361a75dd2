"""A temp Clawden install rendered as units against the real venv (systemd checks that ExecStart exists)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from clawden import config
from clawden.cli import units
from tests.plugins.docker import _unavailable

# Three ways units get installed: as root (the runner keeps three capabilities), as a dedicated
# service user (with the Docker socket's group), and as user units.
VARIANTS = ("system-root", "system", "user")


def install_for(home: Path, variant: str) -> units.Install:
    home.mkdir(parents=True, exist_ok=True)
    cfg = config.load(home)
    inst = dataclasses.replace(
        units.discover(cfg, "user" if variant == "user" else "system", ["telegram"]), http=("webhooks", "web")
    )  # every unit there is, the HTTP services' too
    if variant == "system-root":
        return dataclasses.replace(inst, user="root", group="root", docker_group=None)
    if variant == "system":
        return dataclasses.replace(inst, user="clawden", group="clawden", docker_group="docker")
    return inst


def write_units(inst: units.Install, folder: Path) -> list[Path]:
    """The rendered files, plus each bridge's instances as links to the templates (as `enable` makes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for unit in units.systemd_units(inst):
        (folder / unit.name).write_text(unit.text)
        paths.append(folder / unit.name)
    instances = []
    for name in ("telegram", "matrix"):
        for instance, template in zip(
            units.channel_units(name), (units.CHANNEL_TEMPLATE, units.CHANNEL_PATH_TEMPLATE), strict=True
        ):
            (folder / instance).symlink_to(template)
            instances.append(folder / instance)
    return [*paths, *instances]


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        _unavailable("systemd-analyze is missing: install Debian's `systemd` package (bin/setup --tests does)")
    return tool


def analyze_env(folder: Path, runtime_dir: Path) -> dict[str, str]:
    """Units resolve their neighbours from `folder` first; --user needs a private runtime dir."""
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    return dict(os.environ, SYSTEMD_UNIT_PATH=f"{folder}:", XDG_RUNTIME_DIR=str(runtime_dir))
