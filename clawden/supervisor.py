"""`clawden up`: the embedded NATS server and every service as its own child process, in the foreground.

Each child runs what a systemd unit runs (`clawden run <service>`: the same entry point, environment
and log), with its own notify socket so we know when it is ready; a child that dies is restarted with
backoff; Ctrl-C, SIGTERM or a closed terminal (SIGHUP) stops the services first and NATS last. Each child,
NATS too, runs in its own session, so a signal to the terminal's process group reaches only this process.
On Linux each child is also sent SIGTERM when this process dies however it dies (SIGKILL, the OOM killer):
left running, re-parented to init, they would hold NATS's port and make the next `clawden up` refuse to start.

On Linux the children are forked from this process once it has imported every service's modules
(`preload`), the way a pre-forking server shares its code: their module pages stay shared, which
takes a third off the stack's memory (PSS, `bench/scale.py`) and each start's import time. Elsewhere
(macOS, where forking a process that has loaded system frameworks is unsafe) each child is a fresh
`python -m clawden run <service>`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO, TextIO

from clawden import logs, natsauth, natsserver, pdeathsig, setup
from clawden.backoff import backoff
from clawden.config import Config, configured_bridges, http_services, unknown_in_file
from clawden.keywatch import KeyFile, judge
from clawden.models import model_warning
from clawden.runtime import EX_CONFIG, EX_RESTART
from clawden.sdnotify import TROUBLE_FIELD

SERVICES = ("vault", "router", "runner", "scheduler", "approvals")
# Ctrl-C, a stop, and a closed terminal or lost SSH session (SIGHUP): each is the same orderly stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_TIMEOUT = 15.0
MODEL_KEY_FIELD, NO_MODEL_KEY = "X_CLAWDEN_MODEL_KEY", "missing"  # what the vault notifies (services/vault)
READY = "all services ready — talk to your assistant with `clawden chat`"
# Without these no message is answered; a bridge, the scheduler or the web app missing leaves the rest useful.
NEEDED_TO_ANSWER = ("vault", "router", "runner")
NOT_READY_NO_KEY = "not ready: no model key"
NO_MODEL_KEY_SAID = (
    NOT_READY_NO_KEY
    + """, so the assistant cannot answer anyone. Give the vault your Anthropic API key
(no restart needed; this console says when it has it), in another terminal:
    clawden secrets add anthropic --type anthropic      (paste the key at the prompt)
or write it to {key_file} (chmod 600) and run `clawden init`."""
)


# CLAWDEN_UP_FORK=0 starts every child afresh on Linux too (to compare, or to rule the fork out).
FORK = sys.platform == "linux" and os.environ.get("CLAWDEN_UP_FORK", "1") != "0"


def preload(services: tuple[str, ...]) -> None:
    """Import what the children will run, then keep those objects out of the collector's way so that
    it never writes to (and so unshares) their pages in a child."""
    from clawden.runtime import load_main

    for name in services:
        # One that cannot load is the child's to report, in its own log, as it would unforked.
        with contextlib.suppress(Exception, SystemExit):
            load_main(name)
    gc.freeze()


class Forked:
    """A child forked from this process, with the part of `subprocess.Popen` the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = os.pidfd_open(pid)  # readable once the child has exited: an exact wait

    @classmethod
    def start(cls, name: str, env: dict[str, str], log: BinaryIO) -> Forked:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return cls(pid)
        code = 70  # EX_SOFTWARE, if even the start below fails
        try:
            os.setsid()
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            pdeathsig.arm(parent)  # after the reset: the supervisor's handler would swallow the signal
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the other children's notify sockets, NATS's log
            os.environ.clear()
            os.environ.update(env)
            with open("/proc/self/comm", "w") as comm:  # what `ps`/`top` name it
                comm.write(f"clawden-{name}"[:15])
            from clawden import runtime

            code = runtime.run(name)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                os.close(self._pidfd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            if not select.select([self._pidfd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"clawden run (pid {self.pid})", timeout or 0)
            self.poll()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class Child:
    name: str
    log_path: Path
    notify_path: Path
    proc: subprocess.Popen[bytes] | Forked | None = None
    notify: socket.socket | None = None
    ready: bool = False
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    said: dict[str, str] = field(default_factory=dict)  # the last value of each notify field
    log_offset: int = 0  # where this run's lines start in its log
    failed: str = ""  # why it cannot run as configured: it is not restarted, and readiness names it
    trouble: str = ""  # what it says it cannot do (`ServiceContext.set_trouble`), as last printed; "" when none
    # A bridge that could not run as configured: its credential file, started again once that holds a new one.
    key: KeyFile | None = None


class Supervisor:
    def __init__(self, cfg: Config, services: tuple[str, ...], out: TextIO = sys.stdout, fork: bool = False) -> None:
        self.cfg = cfg
        self.fork = fork  # children are forked from this process (see `preload`), else started afresh
        self.out = out
        self.logs = cfg.path("logs")
        self.logs.mkdir(exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="clawden-up-"))
        self.children = [Child(s, self.logs / f"{s.replace('@', '-')}.log", self.tmp / f"{s}.notify") for s in services]
        self.nats: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.announced = ""  # what was last said about being ready, so it is said once per change
        self.started = False  # whether NATS or any service was started: else there is nothing to say stopped

    def say(self, line: str) -> None:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) cannot be told, and the stop goes on
            print(line, file=self.out, flush=True)

    def start_nats(self) -> None:
        if not self.cfg.embedded_nats:
            self.say(f"using NATS at {self.cfg.nats_url}")
            return
        log = self.logs / "nats.log"
        name = natsserver.announced_name(self.cfg.nats.port)
        if name == natsauth.server_name(self.cfg):
            raise SystemExit(
                f"this install's NATS already runs on port {self.cfg.nats.port}: is `clawden up` "
                "running in another terminal (or the units)?"
            )
        if name is not None and name.startswith("clawden-") and name != "clawden-":
            raise SystemExit(
                f"port {self.cfg.nats.port} belongs to another Clawden install (install id "
                f"{name.removeprefix('clawden-')}): give this one its own port ([nats] port in "
                f"{self.cfg.path('config.toml')}), then run `clawden init` and `clawden up` again"
            )
        try:
            with socket.create_connection(("127.0.0.1", self.cfg.nats.port), timeout=0.3):
                raise SystemExit(
                    f"port {self.cfg.nats.port} is taken: is another `clawden up` running? "
                    f"(or set [nats] port in {self.cfg.path('config.toml')})"
                )
        except OSError:
            pass
        try:
            self.nats = natsserver.start(
                self.cfg.nats.port,
                self.cfg.data_dir / "nats",
                log_file=log,
                config_file=natsauth.conf_path(self.cfg),
                with_parent=True,
            )
        except natsserver.NatsServerError as exc:
            raise SystemExit(f"NATS did not start: {exc} (see {log})") from None
        self.started = True
        self.say(f"nats      {self.cfg.nats_url:<28} log: {log}")

    def spawn(self, child: Child) -> None:
        if child.notify is None:
            child.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            child.notify.bind(str(child.notify_path))
            child.notify.setblocking(False)
        env = dict(
            os.environ,
            NOTIFY_SOCKET=str(child.notify_path),
            CLAWDEN_HOME=self.cfg.home,
            CLAWDEN_RUNNER_STOP_CONTAINERS_ON_EXIT="true",
            **{logs.LOG_FILE_VARIABLE: str(child.log_path)},
        )
        if self.cfg.embedded_nats:
            env["CLAWDEN_NATS_URL"] = self.cfg.nats_url
        log = open(child.log_path, "ab")  # noqa: SIM115 - the child owns it
        child.log_offset = log.tell()
        if self.fork:
            child.proc = Forked.start(child.name, env, log)
        else:
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", child.name],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=pdeathsig.preexec(os.getpid()),
            )
        log.close()
        self.started = True
        child.ready = False
        child.trouble = ""
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
            self.nats = natsserver.start(
                self.cfg.nats.port,
                self.cfg.data_dir / "nats",
                log_file=self.logs / "nats.log",
                config_file=natsauth.conf_path(self.cfg),
                with_parent=True,
            )
        except natsserver.NatsServerError as exc:
            self.say(f"nats did not start again: {exc}")
            raise SystemExit(1) from exc

    def poll(self) -> None:
        self.keep_nats()
        now = time.monotonic()
        for child in self.children:
            self._read_notify(child)
            if child.proc is None:
                if child.key is not None and self._key_mended(child):
                    child.next_start = now
                if now >= child.next_start:
                    self.spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                if child.restarts and now - child.started_at > 60:
                    child.restarts = 0  # healthy again: the next crash restarts at once
                continue
            if code == EX_CONFIG:  # it said why in its log; restarting would only say it again
                # The service logged "<name> cannot run as configured: <why>": the why is what is said here.
                why = last_error(child.log_path, child.log_offset)
                child.failed = why.removeprefix(f"{child.name} cannot run as configured: ") or f"exited {EX_CONFIG}"
                child.proc, child.next_start = None, float("inf")
                if child.name.startswith("channel@"):  # a refused token, perhaps: mended in its file, it is tried again
                    child.key = KeyFile.of(self.cfg, child.name.removeprefix("channel@"))
                until = f" until {child.key.shown} holds a new credential" if child.key is not None else ""
                self.say(
                    f"{child.name} cannot run as configured: {child.failed}\n"
                    f"{'':<10}not restarting it{until} (see {child.log_path})"
                )
                self.announce()  # the others may all be ready already: say so, and that this one is not
                continue
            if code == EX_RESTART and child.ready:  # a restart it asked for (a new credential): no crash to back off
                status = child.said.get("STATUS", "")  # "restarting: <why>" (`ServiceContext.restart`)
                self.say(f"{child.name} {status if status.startswith('restarting: ') else 'restarting, as it asked'}")
                child.proc, child.next_start = None, now
                continue
            delay = backoff(child.restarts, cap=30.0) if child.restarts else 0.5
            child.restarts += 1
            child.proc = None
            child.next_start = now + delay
            self.say(f"{child.name} exited with {code}; restarting in {delay:.1f}s (see {child.log_path})")

    def _key_mended(self, child: Child) -> bool:
        """Whether the credential file of a bridge that could not run now holds another credential (one stat a poll;
        the bytes are read only when it moved)."""
        assert child.key is not None
        look = child.key.look()
        if look is None or judge(child.key.taken, look) != "restart":
            return False
        self.say(f"{child.name}: {child.key.shown} changed; starting it again")
        child.key, child.failed = None, ""
        return True

    def nothing_runs(self) -> bool:
        """Every service has given up for good (each cannot run as configured): waiting would change nothing."""
        return bool(self.children) and all(c.proc is None and c.next_start == float("inf") for c in self.children)

    def _read_notify(self, child: Child) -> None:
        if child.notify is None:
            return
        while True:
            try:
                data = child.notify.recv(4096).decode(errors="replace")  # a cut datagram is no crash
            except (BlockingIOError, OSError):
                return
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            child.said.update(fields)
            if fields.get("READY") == "1" and not child.ready:
                child.ready = True
                self.say(f"{child.name} ready")
            if (trouble := fields.get(TROUBLE_FIELD.upper())) is not None and trouble != child.trouble:
                # Said once per change: what it cannot do, and when that is over.
                self.say(f"{child.name} degraded: {trouble}" if trouble else f"{child.name} ok again")
                child.trouble = trouble
            self.announce()

    def readiness(self) -> str:
        """ "" while a service is still starting; else what to tell the person: ready, what is missing, and which
        services cannot run as configured (each said when it gave up, and named again here with why)."""
        if not self.children or any(not c.ready and not c.failed for c in self.children):
            return ""
        failed = [c for c in self.children if c.failed]
        if len(failed) == len(self.children):
            return ""  # nothing runs: `up` says so and exits
        broken = "".join(f"\n  {c.name}: {c.failed} (see {c.log_path})" for c in failed)
        if needed := [c.name for c in failed if c.name in NEEDED_TO_ANSWER]:
            return (
                f"not ready: cannot run as configured:{broken}\n"
                f"no message can be answered without the {' and '.join(needed)}; the other services are ready"
            )
        vault = next((c for c in self.children if c.name == "vault"), None)
        if vault is not None and vault.said.get(MODEL_KEY_FIELD, NO_MODEL_KEY) == NO_MODEL_KEY:
            state = NO_MODEL_KEY_SAID.format(key_file=self.cfg.keys_dir / "anthropic")
            return f"{state}\nand cannot run as configured:{broken}" if failed else state
        if failed:
            return (
                f"ready, except what cannot run as configured:{broken}\n"
                "the other services are ready — talk to your assistant with `clawden chat`"
            )
        return READY

    def announce(self) -> None:
        state = self.readiness()
        if state and state != self.announced:
            vault = next((c for c in self.children if c.name == "vault"), None)
            key = vault.said.get(MODEL_KEY_FIELD, NO_MODEL_KEY) if vault is not None else NO_MODEL_KEY
            if self.announced.startswith(NOT_READY_NO_KEY) and key != NO_MODEL_KEY:
                self.say(f"the vault has a model key now (secret {key})")
            self.say(state)
        if state:
            self.announced = state

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
        if self.started:  # a refused start (NATS already runs) stopped nothing: "stopped" would read as if it had
            self.say("stopped")


def default_services(cfg: Config) -> tuple[str, ...]:
    """What `clawden up` runs: the core, the webhook front door where `[webhooks] listen` is set, the web service
    where `[web] listen` is, and every bridge with a token."""
    return (*SERVICES, *http_services(cfg), *configured_bridges(cfg))


def up(home: Path | None, services: list[str] | None = None) -> int:
    cfg = setup.init(home)
    sup = Supervisor(cfg, tuple(services or default_services(cfg)), fork=FORK)
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    sup.say(f"Clawden home {cfg.home}")
    for problem in config_warnings(cfg):
        sup.say(f"warning: {problem}")
    if "runner" in (services or SERVICES) and (missing := image_warning(cfg.runner.image)):
        sup.say(f"warning: {missing}")
    if sup.fork:
        preload(tuple(c.name for c in sup.children))
    try:
        sup.start_nats()
        while not received:
            sup.poll()
            if sup.nothing_runs():
                sup.say("nothing can run as configured: fix what is said above, then `clawden up` again")
                return 1
            time.sleep(0.1)
    finally:
        sup.stop()
    return 0


def config_warnings(cfg: Config) -> list[str]:
    """What in config.toml is probably a mistake: names Clawden does not read, a model that is not Claude's."""
    found = [f"{cfg.path('config.toml')}: {line}" for line in unknown_in_file(cfg)]
    if problem := model_warning(cfg.model.model):
        found.append(f"[model] model: {problem}")
    return found


def image_warning(image: str) -> str | None:
    """The agent image missing is said at `up`, not at the first message (groups' own: `clawden doctor`)."""
    from clawden.dockercli import DockerError, image_exists

    try:
        if image_exists(image):
            return None
    except DockerError as exc:  # no docker CLI
        return f"cannot check the agent image {image}: {exc}"
    return (
        f"agent image {image} is missing (or Docker does not answer): no agent can start until "
        f"`clawden image build --tag {image}`; `clawden doctor` checks Docker and every group's image"
    )


_ERROR_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\.\d{3} E [\w.-]+: (.*)$")


def last_error(log_path: Path, offset: int = 0) -> str:
    """The last error a service logged since `offset` (its last line when it logged none as an error)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(its log cannot be read)"
    errors = [m.group(1) for line in lines if (m := _ERROR_LINE.match(line))]
    plain = [line for line in lines if line.strip()]
    return (errors or plain or ["(it logged nothing)"])[-1]
