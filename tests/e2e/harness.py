"""A whole Clawden for tests and benchmarks: `clawden up` as a real process tree, the fake model,
and a terminal-channel client speaking on the bus like `clawden chat` does."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import pwd
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from clawden import config, natsauth, natsserver, sessiondb, setup
from clawden.bus import bind, connect, consume, ensure_streams, publish_stored, subjects
from clawden.bus import events as ev
from clawden.chat import inbound_event, terminal_outbound
from tests.fakes.anthropic import FakeAnthropic, make_tls, start_in_thread

LABEL_INSTALL = "dev.clawden.install"


@dataclass
class Stack:
    home: Path
    install_id: str
    key: str
    fake: FakeAnthropic
    proc: subprocess.Popen[str]
    nats_url: str
    output: list[str] = field(default_factory=list)
    docker_host: str | None = None  # the engine `clawden up` was given, when not the environment's

    def env(self) -> dict[str, str]:
        return dict(os.environ, CLAWDEN_HOME=str(self.home))

    def engine(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host) if self.docker_host else docker.from_env()

    async def connect(self, name: str = "test") -> Client:
        """A client as the owner's CLI identity: the stack's NATS lets nobody in without one."""
        seed = natsauth.seed_path(config.load(self.home), natsauth.CLI).read_text().strip()
        return await connect(self.nats_url, name, nkeys_seed_str=seed)

    def containers(self) -> list[docker.models.containers.Container]:
        client = self.engine()
        try:
            return list(client.containers.list(filters={"label": f"{LABEL_INSTALL}={self.install_id}"}))
        finally:
            client.close()

    async def wait_until_idle(self, session_id: str, timeout: float = 30) -> None:
        """A reply can arrive before the agent's turn ends (its closing model call): wait for the ack."""
        folder = self.home / "sessions" / "main" / session_id
        deadline = time.monotonic() + timeout
        while True:
            unfinished = sessiondb.unfinished(folder)
            if not unfinished:
                return
            assert time.monotonic() < deadline, unfinished
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        client = self.engine()
        try:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={self.install_id}"}):
                c.remove(force=True)
        finally:
            client.close()
        self.fake.stop_thread()


def session_folder(stack: Stack, chat_id: str) -> Path | None:
    """The folder of main's session for `chat_id`, once the runner has made it."""
    for inbound in (stack.home / "sessions" / "main").glob("*/inbound.db"):
        try:
            routing = sessiondb.session_routing(inbound.parent)
        except sqlite3.OperationalError:  # a session the runner is still making: its file is there, no table yet
            continue
        if routing is not None and routing.chat_id == chat_id:
            return inbound.parent
    return None


async def service_pid(stack: Stack, service: str, timeout: float = 60) -> int:
    """The pid a running service answers its ping with, once it answers (`clawden up` restarts it)."""
    nc = await stack.connect()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = await nc.request(subjects.ctl(service, "ping"), b"", timeout=1)
                return int(json.loads(reply.data)["pid"])
            except Exception:
                assert time.monotonic() < deadline, f"{service} never answered"
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


def start_stack(
    home: Path,
    *,
    idle_timeout: float = 1800,
    ready_timeout: float = 90,
    runner: str = "",
    vault: str = "",
    sites: tuple[str, ...] = (),
    hosts: dict[str, str] | None = None,
    nats: str = "",
    user: str | None = None,
    docker_host: str | None = None,
    python: str = sys.executable,
    environ: dict[str, str] | None = None,
) -> Stack:
    """`user`: who runs `clawden up` (the test runs as root), given the home, with `python` and more `environ`;
    `docker_host`: its engine.
    `nats`: more `[nats]` lines, e.g. a cluster's `url = [...]` (then `clawden up` runs no server of its own).
    `sites`: more hosts the fake answers as (in its certificate and the vault's host map), so a test can
    see what an agent's tool sends them through the vault. `hosts`: more hosts mapped to a test's own
    server ("127.0.0.1:port"), whose certificate is then `<home>/run/fake-site.pem` (the fake's, from the
    vault's trusted test CA)."""
    hosts = hosts or {}
    fake = start_in_thread()
    install_id = f"t{secrets.token_hex(4)}"
    port = natsserver.free_port()
    cfg = setup.init(home)
    # Claude Code keeps its default https://api.anthropic.com; the vault intercepts it and dials the
    # fake (TLS on loopback, with a test CA) through its host map. keys/anthropic is the bootstrap
    # source of the vault's `anthropic` secret, as in the README's quick start.
    tls = make_tls(["api.anthropic.com", *sites, *hosts], str(cfg.path("run")))
    fake_address = fake.call(fake.listen_tls(tls.server_context))
    mapped = {"api.anthropic.com": fake_address} | dict.fromkeys(sites, fake_address) | hosts
    host_map = ", ".join(f'"{host}" = "{address}"' for host, address in mapped.items())
    key = f"sk-ant-api03-{secrets.token_urlsafe(24)}"
    (cfg.keys_dir / "anthropic").write_text(key)
    (cfg.keys_dir / "anthropic").chmod(0o600)
    cfg.path("config.toml").write_text(f"""\
install_id = "{install_id}"
[nats]
port = {port}
{nats}
[runner]
idle_timeout = {idle_timeout}
{runner}
[vault]
extra_ca_file = "{tls.ca_file}"
host_map = {{{host_map}}}
{vault}
""")
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    env.update(environ or {})
    if user is not None:
        env["HOME"] = str(Path(f"~{user}").expanduser())
        subprocess.run(["chown", "-R", f"{user}:", str(home)], check=True)
    proc = subprocess.Popen(
        [python, "-m", "clawden", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        user=user,
        group=None if user is None else pwd.getpwnam(user).pw_gid,
        extra_groups=None if user is None else [],
    )
    stack = Stack(home, install_id, key, fake, proc, config.load(home).nats_url, docker_host=docker_host)
    deadline = time.monotonic() + ready_timeout
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            stack.output.append(line)
            if "all services ready" in line:
                return stack
            continue
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stack.stop()
    logs = "".join(p.read_text() for p in (home / "logs").glob("*.log"))
    raise RuntimeError(f"clawden up did not get ready:\n{''.join(stack.output)}\n{logs}")


class Terminal:
    """One terminal chat on the bus: sends lines, collects replies (and acknowledges them). `ask` takes the answer to
    its own message (`OutboundMessage.answering`, as `clawden chat --once` does); every other reply (a notice, a card,
    a late answer to an earlier message) stays unread for `reply`, oldest first."""

    def __init__(self, stack: Stack, chat_id: str) -> None:
        self.stack = stack
        self.chat_id = chat_id
        self.unread: deque[ev.OutboundMessage] = deque()  # in the order they came, less what a test has taken
        self.came = asyncio.Condition()
        self.seen: set[str] = set()
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None

    async def __aenter__(self) -> Terminal:
        self.nc = await self.stack.connect(f"test-{self.chat_id}")
        self.js = self.nc.jetstream()
        await ensure_streams(self.js)
        sub = await bind(self.js, terminal_outbound(self.chat_id))

        async def on_reply(event: ev.Outbound, msg: Msg) -> None:
            if isinstance(event, ev.OutboundMessage) and event.route.chat_id == self.chat_id:
                if event.id in self.seen:
                    return  # redelivered after a lost ack: `clawden chat` shows it once, and so do we
                self.seen.add(event.id)
                async with self.came:
                    self.unread.append(event)
                    self.came.notify_all()
                # Like `clawden chat`: a receipt with a platform id, so edits and reactions can target it.
                receipt = ev.DeliveryReceipt(
                    outbound_id=event.id,
                    route=event.route,
                    ok=True,
                    session_id=event.session_id,
                    seq=event.seq,
                    platform_message_id=f"term-{event.seq}",
                )
                assert self.js is not None
                await publish_stored(self.js, subjects.receipt("local"), receipt, msg_id=f"receipt:{event.id}")

        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(
            consume(
                sub,
                ev.OUTBOUND_DECODER,
                on_reply,
                stopping=self._stopping,
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.nc is not None
        self._stopping.set()
        await asyncio.wait_for(self._task, 5)
        await self.nc.drain()

    async def send(self, text: str) -> ev.InboundMessage:
        assert self.js is not None
        event = inbound_event(self.chat_id, getpass.getuser(), text)  # the machine owner, as `clawden chat`
        await publish_stored(self.js, subjects.inbound("local"), event, msg_id=event.key)
        return event

    async def reply(self, timeout: float = 60) -> ev.OutboundMessage:
        """The oldest reply not read yet, whatever it answers (a notice, a card, a scheduled task's message)."""
        return await self._take(lambda _: True, timeout, "no reply")

    async def answer(self, sent: ev.InboundMessage, timeout: float = 60) -> ev.OutboundMessage:
        """The reply answering `sent`; those that came before it stay unread."""
        return await self._take(lambda r: r.answering == sent.message_id, timeout, f"no answer to {sent.text!r}")

    async def ask(self, text: str, timeout: float = 60) -> ev.OutboundMessage:
        return await self.answer(await self.send(text), timeout)

    async def _take(
        self, wanted: Callable[[ev.OutboundMessage], bool], timeout: float, what: str
    ) -> ev.OutboundMessage:
        def found() -> ev.OutboundMessage | None:
            return next((r for r in self.unread if wanted(r)), None)

        try:
            async with self.came:
                reply = await asyncio.wait_for(self.came.wait_for(found), timeout)
                assert reply is not None
                self.unread.remove(reply)
                return reply
        except TimeoutError:
            unread = [(r.kind, r.answering, r.text[:80]) for r in self.unread]
            raise TimeoutError(f"{what} in {self.chat_id} within {timeout:.0f}s; unread: {unread}") from None
