"""A second Docker engine beside the system one, and a whole `clawden up` run against it by a user of its own: what the
end-to-end tests on a rootless engine and on a userns-remapped one share."""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import docker

from tests.e2e.harness import Stack, Terminal, session_folder, start_stack
from tests.procs import running

REPO = Path(__file__).resolve().parents[2]
# The test's venv may live where the user cannot go (its Python under root's home): the user runs Debian's Python of
# the same version over the venv's packages and this tree, which is what a venv of the user's own would hold.
PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
PYTHONPATH = os.pathsep.join([str(REPO), sysconfig.get_path("purelib")])


def make_user(name: str, *options: str, subids: str = "") -> pwd.struct_passwd:
    """`name`, made once by useradd with `options`, and given the sub-uids and sub-gids `subids` ("first-last") an
    engine maps containers' users to, unless it has some."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", *options, "--shell", "/usr/sbin/nologin", name], check=True)
    for table, flag in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        if subids and not any(line.startswith(f"{name}:") for line in Path(table).read_text().splitlines()):
            subprocess.run(["usermod", flag, subids, name], check=True)
    return pwd.getpwnam(name)


def kill_processes(user: pwd.struct_passwd, killed: int = 0) -> None:
    """SIGKILL every process of `user` that an earlier run left (a SIGKILLed pytest never reaches its fixtures'
    cleanup), and return once the kernel has reaped them and `killed`, a process already sent SIGKILL (0: none)."""
    subprocess.run(["pkill", "--signal", "KILL", "--uid", str(user.pw_uid)], check=False)
    pgrep, gone_by = ["pgrep", "--uid", str(user.pw_uid)], time.monotonic() + 30
    while running(killed) or subprocess.run(pgrep, capture_output=True).returncode == 0:
        assert time.monotonic() < gone_by, f"what an earlier run left ({user.pw_name}'s processes) outlives SIGKILL"
        time.sleep(0.1)  # the kernel is still reaping them


@contextmanager
def engine(
    command: list[str],
    listens_on: Path,
    log: Path,
    *,
    user: pwd.struct_passwd | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """The DOCKER_HOST of a Docker engine started by `command` (as `user`, in its home, if given), once it listens on
    `listens_on`; its output goes to `log`, shown if it fails to start. Its whole process group is stopped on the way
    out, whatever happens."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
            cwd=None if user is None else user.pw_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:  # the engine listens on its socket once it has started
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(listens_on))
                    break
                except OSError:
                    assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)  # the engine is still starting
        assert process.poll() is None, log.read_text()[-3000:]  # the engine answering is this one
        yield f"unix://{listens_on}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def load_image(image: str, source: docker.DockerClient, host: str) -> bool:
    """Put the `source` engine's `image` into the engine at `host` (docker save | docker load), unless that engine holds
    it already (the same id): whether it loaded it."""
    with closing(docker.DockerClient(base_url=host)) as client:
        wanted = source.images.get(image).id
        if any(wanted == held.id for held in client.images.list(image)):
            return False
    with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
        load_env = {**os.environ, "DOCKER_HOST": host}
        subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env=load_env, check=True)
    assert save.returncode == 0
    return True


@contextmanager
def clawden_of(user: pwd.struct_passwd, docker_host: str) -> Iterator[Stack]:
    """A whole `clawden up` run by `user` (with PYTHON) against the engine at `docker_host`, in a home under the user's
    own (pytest's tmp_path is root's, where the user may not go); stopped and its home removed on the way out."""
    home = Path(user.pw_dir) / f"home-{secrets.token_hex(4)}"
    stack = start_stack(
        home, user=user.pw_name, docker_host=docker_host, python=PYTHON, environ={"PYTHONPATH": PYTHONPATH}
    )
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def converse(stack: Stack, text: str, chat: str, timeout: float) -> str:
    """The reply to `text`, sent in a new terminal chat named after `chat`."""

    async def ask() -> str:
        async with Terminal(stack, f"{chat}-{secrets.token_hex(3)}") as terminal:
            reply = await terminal.ask(text, timeout=timeout)
            return reply.text

    return asyncio.run(ask())


def session_owners(stack: Stack, container: docker.models.containers.Container) -> set[int]:
    """The uids owning what the agent in `container` wrote in its session folder."""
    folder = session_folder(stack, container.labels.get("dev.clawden.chat", "")) or next(
        (stack.home / "sessions" / "main").iterdir()
    )
    return {p.stat().st_uid for p in folder.iterdir()}


def doctor(stack: Stack, user: pwd.struct_passwd) -> tuple[dict[str, str], str]:
    """`clawden doctor` run by `user` (with PYTHON) against the stack's engine: its lines by check, and its output."""
    assert stack.docker_host is not None
    done = subprocess.run(
        [PYTHON, "-m", "clawden", "doctor"],
        env=stack.env() | {"DOCKER_HOST": stack.docker_host, "PYTHONPATH": PYTHONPATH, "HOME": user.pw_dir},
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # A check's line is its status in 5 columns, a space, then its name up to two spaces; a fix's line starts blank.
    rows = {line[6:].split("  ")[0]: line for line in done.stdout.splitlines() if line[:5].strip()}
    return rows, done.stdout
