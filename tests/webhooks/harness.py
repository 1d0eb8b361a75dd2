"""The front door as systemd runs it: `clawden run webhooks` in its own process, on a free loopback port,
with the WhatsApp route's secrets in keys/ (0600)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from clawden import natsserver, setup
from tests.eventually import eventually
from tests.fakes.whatsapp import APP_SECRET, VERIFY_TOKEN, WebhookSender


def write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def make_home(home: Path, *, settings: str = "") -> int:
    """A home whose front door serves /hooks/whatsapp on a free port (returned)."""
    setup.init(home)
    port = natsserver.free_port()
    with (home / "config.toml").open("a") as f:
        f.write(f'\n[webhooks]\nlisten = "127.0.0.1:{port}"\n{settings}\n')
    write_secret(home / "keys" / "whatsapp.app_secret", APP_SECRET)
    write_secret(home / "keys" / "whatsapp.verify_token", VERIFY_TOKEN)
    return port


class FrontDoorProcess:
    def __init__(self, home: Path, nats_url: str, port: int, log: Path) -> None:
        self.home, self.nats_url, self.port, self.log_path = home, nats_url, port, log
        self.url = f"http://127.0.0.1:{port}/hooks/whatsapp"
        self.proc: subprocess.Popen[bytes] | None = None

    def sender(self) -> WebhookSender:
        return WebhookSender(self.url)

    def spawn(self) -> None:
        env = dict(os.environ, CLAWDEN_HOME=str(self.home), CLAWDEN_NATS_URL=self.nats_url)
        env.pop("NOTIFY_SOCKET", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", "webhooks"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    async def start(self) -> FrontDoorProcess:
        """Spawned, and back once its port takes connections."""
        self.spawn()
        await eventually(self._listening, timeout=30, message=self.output)
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the front door exited ({self.proc.returncode}):\n{self.output()}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
