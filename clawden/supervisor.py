"""`clawden up`: the embedded NATS server and every service as its own child process, in the foreground.

Each child is exactly what a systemd unit runs (`clawden run <service>`), with its own notify
socket so we know when it is ready; a child that dies is restarted with backoff; Ctrl-C stops
the services first and NATS last.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from clawden import logs, natsauth, natsserver, setup
from clawden.config import Config, configured_bridges
from clawden.runtime import EX_CONFIG

SERVICES = ("vault", "router", "runner", "scheduler", "approvals")
STOP_TIMEOUT = 15.0


@dataclass
class Child:
    name: str
    log_path: Path
    notify_path: Path
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    ready: bool = False
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0


class Supervisor:
    def __init__(self, cfg: Config, services: tuple[str, ...], out: object = sys.stdout) -> None:
        self.cfg = cfg
        self.out = out
        self.logs = cfg.path("logs")
        self.logs.mkdir(exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="clawden-up-"))
        self.children = [Child(s, self.logs / f"{s.replace('@', '-')}.log", self.tmp / f"{s}.notify")
                         for s in services]
        self.nats: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)  # type: ignore[call-overload]

    def start_nats(self) -> None:
        if not self.cfg.embedded_nats:
            self.say(f"using NATS at {self.cfg.nats_url}")
            return
        log = self.logs / "nats.log"
        try:
            with socket.create_connection(("127.0.0.1", self.cfg.nats.port), timeout=0.3):
                raise SystemExit(f"port {self.cfg.nats.port} is taken: is another `clawden up` running? "
                                 "(or set [nats] port in config.toml)")
        except OSError:
            pass
        self.nats = natsserver.start(self.cfg.nats.port, self.cfg.data_dir / "nats", log_file=log,
                                     config_file=natsauth.conf_path(self.cfg))
        self.say(f"nats      {self.cfg.nats_url:<28} log: {log}")

    def spawn(self, child: Child) -> None:
        if child.notify is None:
            child.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            child.notify.bind(str(child.notify_path))
            child.notify.setblocking(False)
        env = dict(os.environ, NOTIFY_SOCKET=str(child.notify_path), CLAWDEN_HOME=self.cfg.home,
                   CLAWDEN_RUNNER_STOP_CONTAINERS_ON_EXIT="true", **{logs.LOG_FILE_VARIABLE: str(child.log_path)})
        if self.cfg.embedded_nats:
            env["CLAWDEN_NATS_URL"] = self.cfg.nats_url
        log = open(child.log_path, "ab")  # noqa: SIM115 - the child owns it
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", child.name], env=env, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        child.ready = False
        child.started_at = time.monotonic()
        self.say(f"{child.name:<9} pid {child.proc.pid:<22} log: {child.log_path}")

    def keep_nats(self) -> None:
        """A dead embedded NATS server is started again (JetStream keeps its data on disk, so nothing
        is lost); the services reconnect to it on their own."""
        if self.nats is None or self.stopping or (code := self.nats.poll()) is None:
            return
        self.say(f"nats exited with {code}; restarting it")
        self.nats = None
        try:
            self.nats = natsserver.start(self.cfg.nats.port, self.cfg.data_dir / "nats",
                                         log_file=self.logs / "nats.log", config_file=natsauth.conf_path(self.cfg))
        except natsserver.NatsServerError as exc:
            self.say(f"nats did not start again: {exc}")
            raise SystemExit(1) from exc

    def poll(self) -> None:
        self.keep_nats()
        now = time.monotonic()
        for child in self.children:
            self._read_notify(child)
            if child.proc is None:
                if now >= child.next_start:
                    self.spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                if child.restarts and now - child.started_at > 60:
                    child.restarts = 0  # healthy again: the next crash restarts at once
                continue
            if code == EX_CONFIG:  # it said why in its log; restarting would only say it again
                self.say(f"{child.name} cannot run as configured; not restarting it (see {child.log_path})")
                child.proc, child.next_start = None, float("inf")
                continue
            delay = min(30.0, 2.0 ** child.restarts) if child.restarts else 0.5
            child.restarts += 1
            child.proc = None
            child.next_start = now + delay
            self.say(f"{child.name} exited with {code}; restarting in {delay:.1f}s (see {child.log_path})")

    def _read_notify(self, child: Child) -> None:
        if child.notify is None:
            return
        while True:
            try:
                data = child.notify.recv(4096).decode()
            except (BlockingIOError, OSError):
                return
            if "READY=1" in data and not child.ready:
                child.ready = True
                self.say(f"{child.name} ready")
                if all(c.ready for c in self.children):
                    self.say("all services ready — talk to your assistant with `clawden chat`")

    def stop(self) -> None:
        self.stopping = True
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop in time; killing it")
                child.proc.kill()
                child.proc.wait()
        if self.nats is not None:
            self.nats.terminate()
            try:
                self.nats.wait(10)
            except subprocess.TimeoutExpired:
                self.nats.kill()
        for child in self.children:
            if child.notify is not None:
                child.notify.close()
            child.notify_path.unlink(missing_ok=True)
        self.tmp.rmdir()
        self.say("stopped")


def up(home: Path | None, services: list[str] | None = None) -> int:
    cfg = setup.init(home)
    sup = Supervisor(cfg, tuple(services or [*SERVICES, *configured_bridges(cfg)]))
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sup.say(f"Clawden home {cfg.home}")
    try:
        sup.start_nats()
        while not received:
            sup.poll()
            time.sleep(0.1)
    finally:
        sup.stop()
    return 0
