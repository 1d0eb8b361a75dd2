"""Where `[webhooks] listen` is set, the front door is one of the services: `clawden up` runs it, `clawden
status` expects it, `clawden doctor` checks it, `clawden units install` installs it; elsewhere none of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawden import config, supervisor
from clawden.cli import doctor, status, units


@pytest.mark.parametrize("listen", ["", "127.0.0.1:8787"])
def test_the_front_door_is_run_expected_checked_and_installed_only_where_configured(
    tmp_path: Path, listen: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if listen:
        (home / "config.toml").write_text(f'[webhooks]\nlisten = "{listen}"\n')
    cfg = config.load(home, {})
    wanted = bool(listen)
    assert ("webhooks" in supervisor.default_services(cfg)) is wanted
    assert ("webhooks" in status.expected_services(cfg)) is wanted
    assert any(c.name == "webhooks" for c in doctor.checks(cfg, {})) is wanted
    assert ("webhooks" in units.discover(cfg, "user", []).http) is wanted
    assert config.unknown_in_file(cfg) == []
