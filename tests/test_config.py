"""Configuration: the home `clawden init` makes, config.toml, and environment overrides."""

from __future__ import annotations

import os
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


def test_init_keeps_other_users_out_of_the_home_but_leaves_what_containers_read_readable(tmp_path: Path) -> None:
    """Conversations, the services' databases and logs are in the home: a shell's umask 022 must not open them to
    every local user. Agent containers get their folders by mount, so the home can be closed; under a root install
    they run as uid 1000, which must still read the shared memory (groups/global, mounted read-only)."""
    old = os.umask(0o022)  # a usual shell's
    try:
        cfg = setup.init(tmp_path / "home")
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(cfg.home_path) == mode(cfg.data_dir) == mode(cfg.path("logs")) == 0o700
    assert mode(cfg.groups_dir / "global") == 0o755 and mode(cfg.groups_dir / "global" / "CLAUDE.md") == 0o644


def test_init_leaves_the_mode_of_a_home_that_is_there_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    setup.init(tmp_path)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750  # `clawden doctor` says what to do about it


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
        "anything in [channels.telegram] is not a setting the telegram bridge reads",
    ]


def test_a_misspelt_key_in_a_bridges_table_is_found_with_the_nearest_it_reads(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[channels.telegram]\npol_timeout = 3\nsend_deadline = 60\n[channels.email]\nimap_hots = "x"\n'
    )
    assert config.unknown_in_file(config.load(tmp_path, {})) == [
        "pol_timeout in [channels.telegram] is not a setting the telegram bridge reads (did you mean poll_timeout?)",
        "imap_hots in [channels.email] is not a setting the email bridge reads (did you mean imap_host?)",
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


@pytest.mark.parametrize("value", ["alowlist", "Allowlist", "closed", ""])
def test_a_default_egress_that_is_not_open_or_allowlist_is_an_error_not_open_egress(tmp_path: Path, value: str) -> None:
    (tmp_path / "config.toml").write_text(f'[vault]\ndefault_egress = "{value}"\n')
    with pytest.raises(config.ConfigError, match=r"default_egress.*'open', 'allowlist'"):
        config.load(tmp_path, {})


def test_default_egress_allowlist_is_read(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[vault]\ndefault_egress = "allowlist"\n')
    assert config.load(tmp_path, {}).vault.default_egress == "allowlist"


@pytest.mark.parametrize(
    "upstream",
    [
        "http://api.anthropic.com",  # the key in clear
        "api.anthropic.com",  # no scheme: a path, not a host
        "https://",
        "ftp://api.anthropic.com",
        "https://api.anthropic.com@evil.example",
        "https://user:pw@api.anthropic.com",
        "https://api.anthropic.com?to=evil.example",
        "https://api.anthropic.com#x",
        "https://api.anthropic.com:port",
        "http://192.168.1.5:8080",
    ],
)
def test_a_model_upstream_the_key_must_not_go_to_is_an_error_naming_the_setting(tmp_path: Path, upstream: str) -> None:
    (tmp_path / "config.toml").write_text(f'[model]\nupstream = "{upstream}"\n')
    with pytest.raises(config.ConfigError, match=r"model\.upstream .*https://host"):
        config.load(tmp_path, {})


@pytest.mark.parametrize(
    "upstream",
    [
        "https://api.anthropic.com",
        "https://proxy.example:8443/anthropic",
        "http://127.0.0.1:9000",
        "http://localhost:1",
    ],
)
def test_an_https_model_upstream_or_a_loopback_one_is_taken(tmp_path: Path, upstream: str) -> None:
    assert config.load(tmp_path, {"CLAWDEN_MODEL_UPSTREAM": upstream}).model.upstream == upstream


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_a_nats_port_out_of_range_is_an_error_naming_the_setting(tmp_path: Path, port: int) -> None:
    (tmp_path / "config.toml").write_text(f"[nats]\nport = {port}\n")
    with pytest.raises(config.ConfigError, match=r"nats\.port is .*1 to 65535"):
        config.load(tmp_path, {})


def test_a_token_in_config_toml_and_a_misspelled_channel_are_said_with_where_each_belongs(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[channels.telegram]\ntoken = "123456:ABC"\n[channels.telegrm]\n')
    assert config.unknown_in_file(config.load(tmp_path, {})) == [
        "token in [channels.telegram] is not read: put it in keys/telegram (chmod 600) or CLAWDEN_TELEGRAM_TOKEN,"
        " and take it out of config.toml",
        "[channels.telegrm] is not a channel Clawden knows (did you mean [channels.telegram]?)",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Each passed the load before, and failed only later: every new chat waited 30 s and was told "my container
        # could not be started", or "I'm busy" forever.
        ('[runner]\nmemory = "lots"\n', r"runner\.memory 'lots' is not a memory size: give one from 64m to 1024g"),
        ('[runner]\nmemory = "2m"\n', r"runner\.memory '2m' is not a memory size"),
        ('[runner]\nmemory = ""\n', r"runner\.memory '' is not a memory size"),
        ("[runner]\nmax_containers = 0\n", r"runner\.max_containers = 0: Expected `int` >= 1"),
        ("[runner]\ncpus = 0.0\n", r"runner\.cpus = 0\.0: Expected `float` >= 0\.01"),
        ("[runner]\ncpus = nan\n", r"runner\.cpus = nan"),
        ("[runner]\npids = 0\n", r"runner\.pids = 0: Expected `int` >= 32"),
        ("[runner]\nidle_timeout = -1\n", r"runner\.idle_timeout = -1"),
        ("[runner]\nmax_tries = 0\n", r"runner\.max_tries = 0"),
        ("[runner]\nmax_turns = 0\n", r"runner\.max_turns = 0"),
        ("[runner]\nsafety_poll = 0\n", r"runner\.safety_poll = 0"),
        ("[runner]\ndocker_workers = 0\n", r"runner\.docker_workers = 0"),
        ('[runner]\nimage = "Clawden Agent"\n', r"runner\.image 'Clawden Agent': give an image reference"),
        ('[runner]\nimage = ""\n', r"runner\.image is empty"),
        ('[groups.main]\nmemory = "lots"\n', r"\[groups\.main\] memory 'lots': give a size from 64m to 1024g"),
        ("[groups.main]\ncpus = -1\n", r"\[groups\.main\] cpus -1\.0: give a number from 0\.01 to 256"),
        ("[vault]\napproval_timeout = 0\n", r"vault\.approval_timeout = 0"),
        ("[webhooks]\nrate = 0\n", r"webhooks\.rate = 0"),
        ("[web]\nlogin_burst = 0\n", r"web\.login_burst = 0"),
        ('install_id = "my install"\n', r"install_id = 'my install'"),
    ],
)
def test_a_value_no_service_could_work_with_is_an_error_at_load_naming_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(config.ConfigError, match=message) as raised:
        config.load(tmp_path, {})
    assert str(raised.value).startswith(f"{tmp_path / 'config.toml'}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[runner]\nidle_timeout = '30m'\n",
            "runner.idle_timeout = '30m': expected a number of seconds, written without quotes or a unit "
            "(e.g. 90 or 1.5), not text",
        ),
        (
            "[vault]\naudit_retention_days = '1w'\n",
            "vault.audit_retention_days = '1w': expected a number of days, written without quotes or a unit "
            "(e.g. 90 or 1.5), not text",
        ),
        ("[runner]\ncpus = 'two'\n", "runner.cpus = 'two': expected a number, not text"),
        ("[runner]\npids = 1.5\n", "runner.pids = 1.5: expected a whole number, not a fraction"),
        ("[runner]\nshared_storage = 'yes'\n", "runner.shared_storage = 'yes': expected true or false, not text"),
    ],
)
def test_a_value_of_the_wrong_kind_is_said_in_config_toml_words(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(config.ConfigError) as raised:
        config.load(tmp_path, {})
    assert str(raised.value) == f"{tmp_path / 'config.toml'}: {message}"


def test_memory_sizes_are_read_as_groups_update_reads_them(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[runner]\nmemory = "1.5g"\n[groups.main]\nmemory = "512mb"\n')
    cfg = config.load(tmp_path, {})
    assert cfg.runner.memory == "1.5g" and cfg.groups["main"].memory == "512mb"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CLAWDEN_RUNNER_IDLE_TIMEOUT", "abc", r"runner\.idle_timeout = 'abc': expected a number of seconds"),
        ("CLAWDEN_RUNNER_MAX_CONTAINERS", "0", r"runner\.max_containers = '0': Expected `int` >= 1"),
        ("CLAWDEN_RUNNER_MEMORY", "lots", r"runner\.memory 'lots' is not a memory size"),
        ("CLAWDEN_NATS_PORT", "0", r"nats\.port is 0"),
        ("CLAWDEN_INSTALL_ID", "a b", r"install_id = 'a b'"),
    ],
)
def test_a_bad_environment_override_names_the_variable_not_config_toml(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    (tmp_path / "config.toml").write_text("[runner]\nidle_timeout = 60\n")  # nothing wrong in the file
    with pytest.raises(config.ConfigError, match=message) as raised:
        config.load(tmp_path, {variable: value})
    assert str(raised.value).startswith(f"environment variable {variable}: "), raised.value


def test_a_new_config_says_what_model_upstream_is_for_and_where_the_key_lives(tmp_path: Path) -> None:
    config.init_home(tmp_path / "home")
    text = (tmp_path / "home" / "config.toml").read_text()
    model = text[text.index("[model]") : text.index("upstream =")]

    assert "plain HTTP" in model and "api.anthropic.com whatever this says" in model
    assert "the vault's `anthropic` secret" in model and "Where the vault sends model requests" not in model
