"""A service as systemd runs it: READY only when it takes work, WATCHDOG pings, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats

from clawden import setup
from clawden.bus import subjects
from tests.conftest import NatsServer


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def read_datagrams(sock: socket.socket, until: str, timeout: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if any(until in g for g in got):
            break
    return got


def start_service(name: str, home: Path, nats_url: str, notify: Path) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ, CLAWDEN_HOME=str(home), CLAWDEN_NATS_URL=nats_url, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="400000"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "clawden", "run", name], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_ready_comes_after_nats_and_endpoints_then_watchdog_then_clean_stop(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    setup.init(tmp_path / "home")
    sock = notify_socket(tmp_path / "notify.sock")
    proc = start_service("router", tmp_path / "home", nats_server.url, tmp_path / "notify.sock")
    try:
        before_ready = read_datagrams(sock, "READY=1", timeout=20)
        assert any("READY=1" in d for d in before_ready), before_ready

        async def ping_right_after_ready() -> bytes:
            nc = await nats.connect(nats_server.url)
            try:
                # No retry: the endpoint must already answer the moment READY arrived.
                reply = await nc.request(subjects.ctl("router", "ping"), b"", timeout=2)
                info = await nc.jetstream().consumer_info("CLAWDEN_INBOUND", "router")
                assert info.config.durable_name == "router"
                return reply.data
            finally:
                await nc.close()

        assert json.loads(asyncio.run(ping_right_after_ready()))["service"] == "router"
        pings = read_datagrams(sock, "WATCHDOG=1", timeout=3)
        assert any("WATCHDOG=1" in d for d in pings), pings

        proc.send_signal(signal.SIGTERM)
        stopping = read_datagrams(sock, "STOPPING=1", timeout=10)
        assert any("STOPPING=1" in d for d in stopping)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0].decode()
        sock.close()
    assert "Traceback" not in output, output


def test_service_waits_for_nats_that_starts_later_then_gets_ready(tmp_path: Path, nats_server: NatsServer) -> None:
    setup.init(tmp_path / "home")
    nats_server.stop()
    sock = notify_socket(tmp_path / "notify.sock")
    proc = start_service("router", tmp_path / "home", nats_server.url, tmp_path / "notify.sock")
    try:
        early = read_datagrams(sock, "READY=1", timeout=1.5)
        assert not any("READY=1" in d for d in early)
        assert proc.poll() is None, "a missing NATS must not kill the service"
        nats_server.restart()
        assert any("READY=1" in d for d in read_datagrams(sock, "READY=1", timeout=20))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        sock.close()


def test_control_errors_reach_the_caller_as_plain_words(tmp_path: Path, nats_server: NatsServer) -> None:
    from clawden import config, control
    from clawden.bus import ctl

    setup.init(tmp_path / "home")
    proc = start_service("router", tmp_path / "home", nats_server.url, tmp_path / "n.sock")
    cfg = config.load(tmp_path / "home", {"CLAWDEN_NATS_URL": nats_server.url})
    try:
        # Asked while it starts, before its endpoints exist: the call waits for them, within its timeout.
        groups = control.run(cfg, ctl.router.GROUPS_LIST, ctl.router.ListAll(), timeout=20)
        assert [g.name for g in groups] == ["main"]
        undeclared = ctl.Verb("router", "no-such-verb", ctl.Nothing, ctl.Nothing)  # built by hand: no service has it
        try:
            control.run(cfg, undeclared, ctl.Nothing(), timeout=1)
        except control.ControlError as exc:
            assert "did not answer" in str(exc)
        else:
            raise AssertionError("an unknown verb must fail")
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
