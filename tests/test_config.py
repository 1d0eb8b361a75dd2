"""Configuration: the home `clawden init` makes, config.toml, and environment overrides."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from clawden import config, setup


def test_init_creates_a_private_keys_folder_a_config_and_the_main_group(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path / "home")
    assert stat.S_IMODE((tmp_path / "home" / "keys").stat().st_mode) == 0o700
    assert (tmp_path / "home" / "config.toml").exists()
    assert "send_message" in (cfg.groups_dir / "main" / "CLAUDE.md").read_text()
    assert cfg.embedded_nats and cfg.nats_url == f"nats://127.0.0.1:{cfg.nats.port}"


def test_init_never_overwrites_what_the_user_changed(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path)
    (cfg.groups_dir / "main" / "CLAUDE.md").write_text("mine")
    cfg.path("config.toml").write_text('[runner]\nidle_timeout = 60\n')
    again = setup.init(tmp_path)
    assert (again.groups_dir / "main" / "CLAUDE.md").read_text() == "mine"
    assert again.runner.idle_timeout == 60


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[nats]\nurl = "nats://a:1"\n[runner]\nidle_timeout = 60\n')
    cfg = config.load(tmp_path, {"CLAWDEN_RUNNER_IDLE_TIMEOUT": "5", "CLAWDEN_NATS_URL": "nats://b:2",
                                 "CLAWDEN_RUNNER_STOP_CONTAINERS_ON_EXIT": "true"})
    assert cfg.runner.idle_timeout == 5.0
    assert cfg.runner.stop_containers_on_exit is True
    assert cfg.nats_url == "nats://b:2" and not cfg.embedded_nats


@pytest.mark.parametrize(("text", "message"), [
    ("[runner\n", "config.toml"),
    ('[runner]\nidle_timeout = "soon"\n', "idle_timeout"),
])
def test_a_broken_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(tmp_path, {})


def test_per_group_container_settings(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[groups.research]\nmemory = "4g"\nmounts = [{host = "/srv/papers", name = "papers"}]\n')
    group = config.load(tmp_path, {}).groups["research"]
    assert group.memory == "4g" and group.cpus == 0.0
    assert group.mounts[0].host == "/srv/papers" and not group.mounts[0].read_write


def test_a_bridge_runs_only_with_a_token(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path)
    assert config.configured_bridges(cfg, {}) == []
    assert config.configured_bridges(cfg, {"CLAWDEN_TELEGRAM_TOKEN": "123:abc"}) == ["channel@telegram"]
    (cfg.keys_dir / "telegram").write_text("123:abc")
    assert config.configured_bridges(cfg, {}) == ["channel@telegram"]
