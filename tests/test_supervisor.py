"""`clawden up`: which children it restarts."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clawden import config, natsauth, natsserver, setup
from clawden.supervisor import READY, Supervisor, image_warning
from tests.conftest import NatsServer
from tests.fakes.telegram import FakeTelegram
from tests.procs import running


def test_a_service_that_cannot_run_as_configured_is_not_restarted(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup.init(tmp_path)
    (tmp_path / "config.toml").write_text(f'[nats]\nurl = "{nats_server.url}"\n')
    monkeypatch.delenv("CLAWDEN_TELEGRAM_TOKEN", raising=False)
    out = io.StringIO()
    sup = Supervisor(config.load(tmp_path), ("channel@telegram",), out=out)
    try:
        deadline = time.monotonic() + 30
        while "cannot run as configured" not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()
            sup.poll()
            time.sleep(0.05)
        for _ in range(20):  # a crash would be restarted within half a second
            sup.poll()
            time.sleep(0.05)
        assert sup.children[0].proc is None and out.getvalue().count(" pid ") == 1, out.getvalue()
        assert "channel@telegram cannot run as configured: no telegram token" in out.getvalue()
        assert sup.nothing_runs()
    finally:
        sup.stop()


@pytest.mark.nats
def test_up_exits_when_nothing_can_run_and_says_why(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f"[nats]\nport = {natsserver.free_port()}\n[runer]\ncpus = 1\n")
    cfg = setup.init(home)
    for service in ("scheduler", "approvals"):  # a seed others may read: neither service will use it
        natsauth.seed_path(cfg, service).chmod(0o644)

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "clawden",
            "--home",
            str(home),
            "up",
            "--service",
            "scheduler",
            "--service",
            "approvals",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert out.returncode == 1, out.stdout + out.stderr
    for service in ("scheduler", "approvals"):
        assert (
            f"{service} cannot run as configured: {natsauth.seed_path(cfg, service)} is readable by others;"
            f" run: chmod 600 {natsauth.seed_path(cfg, service)}"
        ) in out.stdout, out.stdout
    assert "nothing can run as configured: fix what is said above, then `clawden up` again" in out.stdout
    assert out.stdout.rstrip().endswith("stopped")
    assert (
        f"warning: {home / 'config.toml'}: [runer] is not a setting Clawden knows (did you mean [runner]?)"
        in out.stdout
    )


@pytest.mark.nats
def test_a_killed_embedded_nats_server_is_started_again_with_its_streams(tmp_path: Path) -> None:
    port = natsserver.free_port()  # for this test's embedded server
    (tmp_path / "config.toml").write_text(f"[nats]\nport = {port}\n")
    cfg = setup.init(tmp_path)
    out = io.StringIO()
    sup = Supervisor(cfg, (), out=out)
    try:
        sup.start_nats()
        assert sup.nats is not None
        asyncio.run(_put_stream(cfg))
        sup.nats.send_signal(signal.SIGKILL)
        sup.nats.wait()

        sup.poll()

        assert "nats exited with -9; restarting it" in out.getvalue()
        assert sup.nats is not None and sup.nats.poll() is None
        assert asyncio.run(_stream_messages(cfg)) == 1  # JetStream's data survived on disk
    finally:
        sup.stop()


async def _put_stream(cfg: config.Config) -> None:
    nc = await natsauth.connect_as(cfg, natsauth.CLI)
    js = nc.jetstream()
    await js.add_stream(name="SURVIVOR", subjects=["clawden.test.survivor"])
    await js.publish("clawden.test.survivor", b"kept")
    await nc.close()


async def _stream_messages(cfg: config.Config) -> int:
    nc = await natsauth.connect_as(cfg, natsauth.CLI)
    try:
        info = await nc.jetstream().stream_info("SURVIVOR")
        return int(info.state.messages)
    finally:
        await nc.close()


def _until(sup: Supervisor, out: io.StringIO, text: str, timeout: float = 60) -> None:
    """Polls the supervisor as `clawden up` does until its console says `text`."""
    deadline = time.monotonic() + timeout
    while text not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        sup.poll()
        time.sleep(0.05)


@pytest.mark.nats
def test_a_bridge_the_platform_refuses_is_named_with_why_and_the_rest_are_said_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    telegram = FakeTelegram().start_in_thread()
    monkeypatch.setenv("CLAWDEN_TELEGRAM_API_URL", telegram.url)
    monkeypatch.delenv("CLAWDEN_TELEGRAM_TOKEN", raising=False)
    (tmp_path / "config.toml").write_text(f"[nats]\nport = {natsserver.free_port()}\n")
    cfg = setup.init(tmp_path)
    (cfg.keys_dir / "telegram").write_text("7012345678:revoked\n")  # a token BotFather no longer honours
    (cfg.keys_dir / "telegram").chmod(0o600)
    out = io.StringIO()
    sup = Supervisor(cfg, ("scheduler", "channel@telegram"), out=out)
    try:
        sup.start_nats()
        deadline = time.monotonic() + 60
        # Both said, in whichever order: the scheduler is ready, the bridge gave up.
        while not (sup.children[0].ready and "channel@telegram cannot run as configured" in out.getvalue()):
            assert time.monotonic() < deadline, out.getvalue()
            sup.poll()
            time.sleep(0.05)

        said = out.getvalue()
        assert "all services ready" not in said, said
        why = "Telegram rejected the bot token (401 Unauthorized); put the token @BotFather gave you in keys/telegram"
        assert f"channel@telegram cannot run as configured: {why}" in said, said  # when it gave up
        log = tmp_path / "logs" / "channel-telegram.log"
        assert "ready, except" in said, said  # the summary, which a bridge that gave up used to keep from being said
        summary = said[said.index("ready, except") :].splitlines()
        assert summary[:3] == [
            "ready, except what cannot run as configured:",
            f"  channel@telegram: {why} (mode 0600) or CLAWDEN_TELEGRAM_TOKEN (see {log})",
            "the other services are ready — talk to your assistant with `clawden chat`",
        ], said
    finally:
        sup.stop()
        telegram.stop_thread()


def test_a_core_service_that_cannot_run_is_said_to_keep_every_message_unanswered(tmp_path: Path) -> None:
    sup = Supervisor(setup.init(tmp_path), ("router", "scheduler", "channel@telegram"), out=io.StringIO())
    router, scheduler, telegram = sup.children
    try:
        router.failed = "NATS refused the identity 'router'"
        scheduler.ready = True
        assert sup.readiness() == ""  # the bridge is still starting: nothing to sum up yet

        telegram.ready = True
        assert sup.readiness().splitlines() == [
            "not ready: cannot run as configured:",
            f"  router: NATS refused the identity 'router' (see {tmp_path / 'logs' / 'router.log'})",
            "no message can be answered without the router; the other services are ready",
        ]
    finally:
        sup.stop()


@pytest.mark.nats
@pytest.mark.parametrize("given_by", ["secrets add", "init"])
def test_up_is_not_ready_without_a_model_key_and_says_so_until_one_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given_by: str
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    home = tmp_path / "home"
    (home).mkdir()
    (home / "config.toml").write_text(f"[nats]\nport = {natsserver.free_port()}\n")
    cfg = setup.init(home)
    out = io.StringIO()
    sup = Supervisor(cfg, ("vault",), out=out)
    env = {**os.environ, "CLAWDEN_HOME": str(home)}
    try:
        sup.start_nats()
        _until(sup, out, "not ready: no model key")
        assert "all services ready" not in out.getvalue()
        assert "clawden secrets add anthropic --type anthropic" in out.getvalue()

        if given_by == "init":
            key_file = home / "keys" / "anthropic"
            key_file.write_text("sk-ant-api03-a-key-given-later\n")
            key_file.chmod(0o600)
            said = subprocess.run(
                [sys.executable, "-m", "clawden", "init"], env=env, capture_output=True, text=True, timeout=60
            )
            assert said.returncode == 0 and "the running vault has it" in said.stdout, said.stdout + said.stderr
        else:
            said = subprocess.run(
                [sys.executable, "-m", "clawden", "secrets", "add", "anthropic", "--type", "anthropic"],
                env=env,
                input="sk-ant-api03-a-key-given-later\n",
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert said.returncode == 0, said.stderr

        _until(sup, out, "all services ready")  # the same vault process: nothing was restarted
        assert "the vault has a model key now (secret anthropic)" in out.getvalue()
        assert out.getvalue().count(" pid ") == 1
    finally:
        sup.stop()


async def _until_async(sup: Supervisor, out: io.StringIO, text: str, timeout: float = 60) -> None:
    """`_until` for a test whose fakes serve on its event loop."""
    deadline = time.monotonic() + timeout
    while text not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        sup.poll()
        await asyncio.sleep(0.05)


@pytest.mark.nats
async def test_the_console_says_when_the_vault_finds_the_model_key_refused_and_when_that_is_over() -> None:
    from clawden import control
    from clawden.bus.ctl import Nothing
    from clawden.bus.ctl import vault as vault_ctl
    from tests.fakes.anthropic import FakeAnthropic, make_tls

    with tempfile.TemporaryDirectory(prefix="clawden-up-", dir="/tmp") as name:  # the vault's sockets: a short path
        home = Path(name) / "home"
        fake = await FakeAnthropic().start()
        tls = make_tls(["api.anthropic.com"], name)
        address = await fake.listen_tls(tls.server_context)
        fake.api_keys = {"sk-ant-api03-the-key-anthropic-knows"}
        home.mkdir()
        (home / "config.toml").write_text(
            f'[nats]\nport = {natsserver.free_port()}\n[vault]\nextra_ca_file = "{tls.ca_file}"\n'
            f'host_map = {{"api.anthropic.com" = "{address}"}}\n'
        )
        cfg = setup.init(home)
        (cfg.keys_dir / "anthropic").write_text("sk-ant-api03-a-key-anthropic-refuses\n")
        (cfg.keys_dir / "anthropic").chmod(0o600)
        out = io.StringIO()
        sup = Supervisor(cfg, ("vault",), out=out)
        try:
            sup.start_nats()
            await _until_async(sup, out, "all services ready")

            await control.ask(cfg, vault_ctl.MODEL_CHECK, Nothing(), timeout=vault_ctl.MODEL_CHECK_WAIT + 2)
            await _until_async(sup, out, "vault degraded: ")
            fake.api_keys = {"sk-ant-api03-a-key-anthropic-refuses"}
            await control.ask(cfg, vault_ctl.MODEL_CHECK, Nothing(), timeout=vault_ctl.MODEL_CHECK_WAIT + 2)
            await _until_async(sup, out, "vault ok again")
        finally:
            sup.stop()
            await fake.stop()

    said = out.getvalue().splitlines()
    assert (
        "vault degraded: the model API refused the anthropic key (401 authentication_error: invalid x-api-key); "
        "set the right one: `clawden secrets add anthropic --type anthropic --replace`"
    ) in said, said
    assert sum(line.startswith("vault degraded") for line in said) == 1, said  # once per change
    assert said.index("vault ok again") > said.index(READY)


def test_a_missing_agent_image_is_said_at_up_with_the_command_that_builds_that_tag(agent_image: str) -> None:
    assert image_warning(agent_image) is None
    problem = image_warning("clawden-agent:no-such-tag")
    assert problem is not None and "`clawden image build --tag clawden-agent:no-such-tag`" in problem


@pytest.mark.nats
@pytest.mark.skipif(sys.platform != "linux", reason="`clawden up` forks its children on Linux only")
def test_up_forks_each_service_from_itself_holding_none_of_its_descriptors_and_restarts_a_killed_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.toml").write_text(f"[nats]\nport = {natsserver.free_port()}\n")
    setup.init(tmp_path)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clawden",
            "--home",
            str(tmp_path),
            "up",
            "--service",
            "scheduler",
            "--service",
            "approvals",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert up.stdout is not None
    said: list[str] = []
    try:
        for line in up.stdout:
            said.append(line)
            if "all services ready" in line:
                break
        pids = {line.split()[0]: int(line.split()[2]) for line in said if " pid " in line}
        assert set(pids) == {"scheduler", "approvals"}, said

        def status(pid: int) -> dict[str, str]:
            return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())

        def opened(pid: int) -> set[str]:
            return {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}

        for name, pid in pids.items():
            assert status(pid)["PPid"].strip() == str(up.pid)
            assert status(pid)["Name"].strip() == f"clawden-{name}"[:15]
            # Nothing of the supervisor's (its console, the other children's notify sockets, NATS's log).
            assert opened(pid) & opened(up.pid) <= {os.devnull}, (opened(pid), opened(up.pid))

        os.kill(pids["approvals"], signal.SIGKILL)
        for line in up.stdout:
            said.append(line)
            if line.startswith("approvals ready"):
                break
        restarted = [int(line.split()[2]) for line in said if line.startswith("approvals ") and " pid " in line]
        assert len(restarted) == 2 and status(restarted[1])["PPid"].strip() == str(up.pid), said
        assert "approvals exited with -9" in "".join(said)
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
    assert up.returncode == 0


def _start_up_in_its_own_terminal_group(
    home: Path, config_toml: bool = True
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """`clawden up` as a terminal runs it (the leader of its own process group), once all its services are
    ready, with the pid of each of its children (`nats` too) by name. `config_toml`: a new home's, on a free port."""
    if config_toml:
        (home / "config.toml").write_text(f"[nats]\nport = {natsserver.free_port()}\n")
    setup.init(home)
    services = ("--service", "scheduler", "--service", "approvals")
    up = subprocess.Popen(
        [sys.executable, "-m", "clawden", "--home", str(home), "up", *services],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert up.stdout is not None
    said: list[str] = []
    for line in up.stdout:
        said.append(line)
        if "all services ready" in line:
            break
    assert "all services ready" in said[-1], said
    pids = {line.split()[0]: int(line.split()[2]) for line in said if " pid " in line}
    for pid in map(int, Path(f"/proc/{up.pid}/task/{up.pid}/children").read_text().split()):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "nats-server":
            pids["nats"] = pid
    assert set(pids) == {"scheduler", "approvals", "nats"}, (said, pids)
    return up, pids


def _kill_left(pids: dict[str, int]) -> None:
    for pid in pids.values():
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.nats
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_closed_terminal_stops_up_and_everything_it_started(tmp_path: Path) -> None:
    up, pids = _start_up_in_its_own_terminal_group(tmp_path)
    try:
        os.killpg(up.pid, signal.SIGHUP)  # what the terminal (or a lost SSH session) sends its group
        rest, _ = up.communicate(timeout=60)
        deadline = time.monotonic() + 5
        while any(running(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)

        assert not [name for name, pid in pids.items() if running(pid)], rest
        assert up.returncode == 0 and rest.rstrip().endswith("stopped"), rest
    finally:
        _kill_left(pids)


@pytest.mark.nats
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's; reads /proc")
def test_a_killed_up_takes_everything_it_started_with_it_and_the_next_up_starts(tmp_path: Path) -> None:
    """SIGKILL gives `up` no chance to stop anything: its children were left running under init, NATS holding
    the port, and the next `up` refused ("this install's NATS already runs on port ...")."""
    up, pids = _start_up_in_its_own_terminal_group(tmp_path)
    exited = {name: os.pidfd_open(pid) for name, pid in pids.items()}  # readable once that process has exited
    try:
        up.kill()
        up.communicate(timeout=30)
        for name, fd in exited.items():
            assert select.select([fd], [], [], 30)[0], f"{name} still runs after `up` was killed"
        assert not [name for name, pid in pids.items() if running(pid)]

        again, started = _start_up_in_its_own_terminal_group(tmp_path, config_toml=False)  # the same port
        again.send_signal(signal.SIGINT)
        rest, _ = again.communicate(timeout=60)
        _kill_left(started)
    finally:
        for fd in exited.values():  # through the pidfds: by now a pid may name another process
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
    assert again.returncode == 0 and rest.rstrip().endswith("stopped"), rest


_NATS_TRAPPED = re.compile(r'^\[\d+\] (\d{4})/(\d\d)/(\d\d) (\d\d:\d\d:\d\d\.\d{3})\d* \[INF\] Trapped "(\w+)" signal')


@pytest.mark.nats
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ctrl_c_stops_nats_only_after_the_services(tmp_path: Path) -> None:
    up, pids = _start_up_in_its_own_terminal_group(tmp_path)
    try:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its foreground group
        rest, _ = up.communicate(timeout=60)
    finally:
        _kill_left(pids)
    assert up.returncode == 0, rest

    trapped = [
        m for line in (tmp_path / "logs" / "nats.log").read_text().splitlines() if (m := _NATS_TRAPPED.match(line))
    ]
    assert [m.group(5) for m in trapped] == ["terminated"]  # the supervisor's SIGTERM, not the terminal's SIGINT
    nats_stopped_at = "{}-{}-{} {}".format(*trapped[0].groups()[:4])
    for service in ("scheduler", "approvals"):
        last = (tmp_path / "logs" / f"{service}.log").read_text().splitlines()[-1]
        assert "stopping" in last and last[:23] <= nats_stopped_at, (last, nats_stopped_at)


@pytest.mark.nats
def test_a_second_up_is_refused_without_saying_stopped(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f"[nats]\nport = {natsserver.free_port()}\n")
    cfg = setup.init(tmp_path)
    out = io.StringIO()
    first = Supervisor(cfg, (), out=out)
    try:
        first.start_nats()

        second = subprocess.run(
            [sys.executable, "-m", "clawden", "--home", str(tmp_path), "up", "--service", "scheduler"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.stop()

    assert second.returncode == 1, second.stdout + second.stderr
    assert f"this install's NATS already runs on port {cfg.nats.port}" in second.stderr, second.stderr
    assert "stopped" not in second.stdout, second.stdout
    assert out.getvalue().rstrip().endswith("stopped")  # the one that started NATS says it


@pytest.mark.nats
def test_nats_that_cannot_start_is_one_line_with_its_reason_and_log_not_a_traceback(tmp_path: Path) -> None:
    port = natsserver.free_port()
    (tmp_path / "config.toml").write_text(f"[nats]\nport = {port}\n")
    setup.init(tmp_path)
    with socket.socket() as holder:  # bound, not listening: nothing answers there, and NATS cannot bind it
        holder.bind(("127.0.0.1", port))

        out = subprocess.run(
            [sys.executable, "-m", "clawden", "--home", str(tmp_path), "up", "--service", "scheduler"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    [said] = out.stderr.splitlines()
    assert said.startswith("NATS did not start: nats-server exited with 1: Error listening on port"), said
    assert "address already in use" in said and f"(see {tmp_path / 'logs' / 'nats.log'})" in said, said
