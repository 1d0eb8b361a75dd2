"""Where Clawden's service units are installed (systemd for a user or the system, launchd) and how to start
Clawden there: what the kernel (a connection's error, `clawden up`) and the operator tools share."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from clawden.config import Config

Mode = Literal["system", "user", "launchd"]
Scope = Literal["user", "system"]
TARGET = "clawden.target"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")


def unit_dir(mode: Mode, user_home: Path, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if mode == "system":
        return SYSTEM_UNIT_DIR
    if mode == "launchd":
        return user_home / "Library" / "LaunchAgents"
    config = env.get("XDG_CONFIG_HOME") or str(user_home / ".config")
    return Path(config) / "systemd" / "user"


def installed_scope(
    unit_dirs: Sequence[tuple[Scope, Path]] | None = None, *, ask_systemctl: bool = True
) -> Scope | None:
    """Where `clawden units install` put the units: its target in a unit folder, else what systemctl knows."""
    default: list[tuple[Scope, Path]] = [("user", unit_dir("user", Path.home())), ("system", SYSTEM_UNIT_DIR)]
    dirs = unit_dirs if unit_dirs is not None else default
    for scope, folder in dirs:
        if (folder / TARGET).exists():
            return scope
    if not ask_systemctl or shutil.which("systemctl") is None:
        return None
    scopes: tuple[Scope, ...] = ("user", "system")
    for scope in scopes:
        try:
            found = subprocess.run(
                ["systemctl", *(["--user"] if scope == "user" else []), "cat", TARGET],
                capture_output=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if found.returncode == 0:
            return scope
    return None


def start_hint(cfg: Config, unit: str = "clawden.target") -> str:
    """How to start Clawden (or one unit of it) here: as installed units, or `clawden up`."""
    if not cfg.embedded_nats and unit == "clawden.target":
        return f"check that the NATS server at {cfg.nats_url} runs and this machine can reach it"
    scope = installed_scope(ask_systemctl=False)
    if scope == "user":
        return f"systemctl --user start {unit}"
    if scope == "system":
        return f"sudo systemctl start {unit}"
    return "start Clawden with `clawden up`"
