"""Configuration: the home `clawden init` makes, config.toml, and environment overrides."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from clawden import config, setup
from clawden.models import model_warning


def test_init_creates_a_private_keys_folder_a_config_and_the_main_group(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path / "home")
    assert stat.S_IMODE((tmp_path / "home" / "keys").stat().st_mode) == 0o700
    assert (tmp_path / "home" / "config.toml").exists()
    assert "send_message" in (cfg.groups_dir / "main" / "CLAUDE.md").read_text()
    assert cfg.embedded_nats and cfg.nats_url == f"nats://127.0.0.1:{cfg.nats.port}"


def test_init_never_overwrites_what_the_user_changed(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path)
    (cfg.groups_dir / "main" / "CLAUDE.md").write_text("mine")
    cfg.path("config.toml").write_text("[runner]\nidle_timeout = 60\n")
    again = setup.init(tmp_path)
    assert (again.groups_dir / "main" / "CLAUDE.md").read_text() == "mine"
    assert again.runner.idle_timeout == 60


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[nats]\nurl = "nats://a:1"\n[runner]\nidle_timeout = 60\n')
    cfg = config.load(
        tmp_path,
        {
            "CLAWDEN_RUNNER_IDLE_TIMEOUT": "5",
            "CLAWDEN_NATS_URL": "nats://b:2",
            "CLAWDEN_RUNNER_STOP_CONTAINERS_ON_EXIT": "true",
        },
    )
    assert cfg.runner.idle_timeout == 5.0
    assert cfg.runner.stop_containers_on_exit is True
    assert cfg.nats_url == "nats://b:2" and not cfg.embedded_nats


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[runner\n", "config.toml"),
        ('[runner]\nidle_timeout = "soon"\n', "idle_timeout"),
    ],
)
def test_a_broken_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(tmp_path, {})


def test_per_group_container_settings(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[groups.research]\nmemory = "4g"\nmounts = [{host = "/srv/papers", name = "papers"}]\n'
    )
    group = config.load(tmp_path, {}).groups["research"]
    assert group.memory == "4g" and group.cpus == 0.0
    assert group.mounts[0].host == "/srv/papers" and not group.mounts[0].read_write


def test_a_bridge_runs_only_with_a_token(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path)
    assert config.configured_bridges(cfg, {}) == []
    assert config.configured_bridges(cfg, {"CLAWDEN_TELEGRAM_TOKEN": "123:abc"}) == ["channel@telegram"]
    (cfg.keys_dir / "telegram").write_text("123:abc")
    assert config.configured_bridges(cfg, {}) == ["channel@telegram"]


def test_names_clawden_does_not_read_are_found_with_the_nearest_it_does(tmp_path: Path) -> None:
    setup.init(tmp_path)
    (tmp_path / "config.toml").write_text(
        'install_id = "x"\n[runer]\ncpus = 1\n[runner]\ncpu = 2\nmemory = "1g"\n'
        '[groups.main]\nmemroy = "1g"\n[channels.telegram]\nanything = 1\n'
        "[vault]\nzebra = 1\n"
    )

    assert config.unknown_in_file(config.load(tmp_path, environ={})) == [
        "[runer] is not a setting Clawden knows (did you mean [runner]?)",
        "cpu in [runner] is not a setting Clawden knows (did you mean cpus?)",
        "memroy in [groups.main] is not a setting Clawden knows (did you mean memory?)",
        "zebra in [vault] is not a setting Clawden knows",
    ]


def test_the_config_init_writes_has_nothing_unknown(tmp_path: Path) -> None:
    assert config.unknown_in_file(setup.init(tmp_path)) == []


@pytest.mark.parametrize(
    ("name", "doubtful"),
    [
        ("claude-sonnet-4-5", False),
        ("claude-opus-4-1-20250805", False),
        ("claude-3-5-haiku-latest", False),
        ("sonnet", False),
        ("opus[1m]", False),
        ("", False),
        ("gpt-4o", True),
        ("claude-gpt", True),
    ],
)
def test_a_model_that_is_not_claudes_is_doubtful(name: str, doubtful: bool) -> None:
    assert (model_warning(name) is not None) == doubtful
