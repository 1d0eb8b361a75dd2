"""`clawden units install|uninstall|show`: what it writes, which commands it runs in which order, and
what it says when this machine has no systemd. (The units running for real: test_pid1.py.)"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from clawden import config
from clawden.cli import units

pytestmark = pytest.mark.process  # each test runs the `clawden` command as a process

FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
"""


def clawden(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawden", "--home", str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    out = clawden(home, "init", env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    token = home / "keys" / "telegram"  # a bridge with a token is a bridge to run
    token.write_text("123:abc\n")
    token.chmod(0o600)
    return home


@pytest.fixture
def machine(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose systemctl and loginctl only write down how they were called."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("systemctl", "loginctl"):
        (bin_dir / tool).write_text(FAKE_TOOL.format(log=log))
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("CLAWDEN_TELEGRAM_TOKEN", None)
    return env, log


def test_user_install_writes_the_units_enables_them_with_the_bridge_and_lingers(
    home: Path, machine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = machine
    out = clawden(home, "units", "install", "--user", env=env)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "config" / "systemd" / "user"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "clawden.target",
            "clawden-nats.service",
            *(f"clawden-{s}.service" for s in units.SERVICES),
            "clawden-channel@.service",
            "clawden-channel@.path",
        ]
    )
    assert f"Environment=CLAWDEN_HOME={home}\n" in (folder / "clawden-router.service").read_text()
    enabled = (
        "systemctl --user enable clawden.target clawden-nats.service "
        + " ".join(f"clawden-{s}.service" for s in units.SERVICES)
        + " clawden-channel@telegram.service clawden-channel@telegram.path"  # the bridge, and what starts it again
    )
    user = pwd.getpwuid(os.getuid()).pw_name
    linger = [] if (units.LINGER_DIR / user).exists() else [f"loginctl enable-linger {user}"]
    assert log.read_text().splitlines() == [
        "systemctl --user daemon-reload",
        enabled,
        "systemctl --user try-reload-or-restart clawden-nats.service",
        *linger,
    ]
    # It says what it did, in order.
    said = out.stdout.splitlines()
    assert f"write {folder / 'clawden-router.service'}" in said
    assert said.index("$ systemctl --user daemon-reload") < said.index("$ " + enabled)
    assert (home / "keys" / "nats" / "channel-telegram.nk").stat().st_mode & 0o777 == 0o600


def test_uninstall_stops_disables_and_removes_what_install_wrote(
    home: Path, machine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = machine
    assert clawden(home, "units", "install", "--user", env=env).returncode == 0
    folder = tmp_path / "config" / "systemd" / "user"
    (folder / "clawden.target.wants").mkdir()  # what the real `enable` made for the bridge
    for instance in units.channel_units("telegram"):
        template = instance.replace("@telegram", "@")
        (folder / "clawden.target.wants" / instance).symlink_to(folder / template)
    log.write_text("")
    out = clawden(home, "units", "uninstall", "--user", env=env)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("systemctl --user disable --now clawden-approvals.service")
    assert calls[0].endswith(" clawden.target clawden-channel@telegram.path clawden-channel@telegram.service")
    assert "clawden-channel@.path" not in calls[0].split()  # a template is no unit to disable
    # Bridges not enabled (started by hand) stop too, and no path unit is left to start one again.
    assert calls[1] == "systemctl --user stop clawden-channel@*.path clawden-channel@*.service"
    assert "systemctl --user daemon-reload" in calls
    assert not list(folder.glob("clawden*.service")) and not (folder / "clawden.target").exists()
    assert not list(folder.glob("clawden*.path"))


def test_dry_run_says_everything_and_does_nothing(
    home: Path, machine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = machine
    out = clawden(home, "units", "install", "--user", "--dry-run", env=env)
    assert out.returncode == 0, out.stderr
    assert "$ systemctl --user daemon-reload" in out.stdout and "$ systemctl --user enable " in out.stdout
    assert not log.exists() and not (tmp_path / "config").exists()


def test_without_systemctl_it_says_so_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty), XDG_CONFIG_HOME=str(tmp_path / "config"))
    out = clawden(home, "units", "install", "--user", env=env)
    assert out.returncode == 1
    assert "systemctl" in out.stderr and "not found" in out.stderr and "clawden up" in out.stderr
    assert not (tmp_path / "config").exists()


def test_show_prints_each_unit_under_its_install_path(
    home: Path, machine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _ = machine
    out = clawden(home, "units", "show", "--user", env=env)
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "config" / "systemd" / "user"
    assert f"# ---- {folder / 'clawden-channel@.service'}" in out.stdout
    assert "ExecStart=" + sys.executable + " -P -m clawden run channel@%i" in out.stdout
    assert "@?" not in out.stdout and "\nUser=" not in out.stdout  # user units never switch users


def test_launchd_elsewhere_than_macos_only_shows_the_plan(home: Path, machine: tuple[dict[str, str], Path]) -> None:
    env, _ = machine
    dry = clawden(home, "units", "install", "--launchd", "--dry-run", env=env)
    assert f"$ launchctl bootstrap gui/{os.getuid()} " in dry.stdout
    assert dry.stdout.count("dev.clawden.channel.telegram.plist") == 2  # written, then bootstrapped
    if sys.platform != "darwin":
        real = clawden(home, "units", "install", "--launchd", env=env)
        assert real.returncode == 1 and "launchctl not found" in real.stderr


def test_rendering_keeps_flagged_lines_only_where_the_flag_holds() -> None:
    template = "A=@X@\n@?on@B=1\n@?!on@B=0\n@?off@C=1\n"
    assert units.render(template, {"X": "x"}, {"on": True, "off": False}) == "A=x\nB=1\n"
    with pytest.raises(units.UnitsError, match="@Y@"):
        units.render("A=@Y@\n", {}, {})


def test_a_failed_linger_is_explained_and_the_install_stands(
    home: Path, machine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _ = machine
    (tmp_path / "bin" / "loginctl").write_text("#!/bin/sh\necho 'Could not enable linger: Access denied' >&2\nexit 1\n")
    out = clawden(home, "units", "install", "--user", env=env)
    user = pwd.getpwuid(os.getuid()).pw_name
    if (units.LINGER_DIR / user).exists():
        pytest.skip(f"{user} lingers already here, so install does not ask")
    assert out.returncode == 0, out.stderr
    assert "Access denied" in out.stdout and f"sudo loginctl enable-linger {user}" in out.stdout


def test_only_hidden_install_paths_are_bound_back_and_the_interpreter_is_among_them() -> None:
    roots = units.install_roots(Path(sys.executable))
    assert all(any(r.is_relative_to(h) for h in units.HIDDEN) for r in roots)
    real = Path(os.path.realpath(sys.executable))
    if any(real.is_relative_to(h) for h in units.HIDDEN):
        assert any(real.is_relative_to(r) for r in roots)


def test_a_bridge_without_a_token_any_more_is_disabled_on_the_next_install(
    home: Path, machine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = machine
    wants = tmp_path / "config" / "systemd" / "user" / "clawden.target.wants"
    wants.mkdir(parents=True)
    (wants / "clawden-channel@slack.service").symlink_to("../clawden-channel@.service")
    (wants / "clawden-channel@slack.path").symlink_to("../clawden-channel@.path")
    assert clawden(home, "units", "install", "--user", env=env).returncode == 0
    calls = log.read_text().splitlines()
    assert "systemctl --user disable --now clawden-channel@slack.path clawden-channel@slack.service" in calls
    assert not any("enable" in c and "slack" in c for c in calls if "disable" not in c)


def test_identities_written_by_root_into_a_users_home_belong_to_that_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can write into someone else's home")
    home = tmp_path / "home"
    assert clawden(home, "init", env=dict(os.environ)).returncode == 0
    nobody = pwd.getpwnam("nobody")
    for path in [home, *home.rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
    (home / "nats.conf").unlink()
    step = units.identities(config.load(home))
    assert step is not None
    step.do()
    written = [home / "nats.conf", *(home / "keys" / "nats").iterdir()]
    assert {p.stat().st_uid for p in written} == {nobody.pw_uid}


def test_install_now_fails_when_a_core_service_did_not_start_and_says_which(
    home: Path, machine: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, log = machine
    # systemd 252's words after a start in which the router crashed and the rest came up (`show` is all it is asked).
    shown = tmp_path / "shown"
    shown.write_text(
        "Id=clawden.target\nActiveState=active\nSubState=active\n\n"
        "Result=exit-code\nExecMainStatus=1\nSyslogIdentifier=clawden-router\nId=clawden-router.service\n"
        "ActiveState=activating\nSubState=auto-restart\n"
    )
    systemctl = tmp_path / "bin" / "systemctl"
    systemctl.write_text(FAKE_TOOL.format(log=log) + f'[ "$2" = show ] && cat "{shown}"\nexit 0\n')
    out = clawden(home, "units", "install", "--user", "--now", env=env)
    assert out.returncode == 1, out.stdout
    assert out.stderr.splitlines()[:2] == [
        "clawden units: installed and enabled, but Clawden's core did not start:",
        "  clawden-router.service did not start: it exited 1",
    ]
    assert "journalctl --user -u clawden-router.service" in out.stderr
    assert log.read_text().splitlines()[-2].startswith("systemctl --user start clawden.target clawden-nats.service")
