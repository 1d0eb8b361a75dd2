"""A real router process (`python -m clawden run router`) on a real nats-server, with its own home."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from clawden import control, setup
from clawden.bus import Consumer, bind, ctl, events, subjects
from clawden.config import Config
from clawden.config import load as load_config
from clawden.control import Rep, Req
from tests.conftest import NatsServer


@dataclass
class RouterProcess:
    home: Path
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def config(self) -> Config:
        cfg = load_config(self.home)
        return msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, url=self.url))

    def env(self) -> dict[str, str]:
        return dict(os.environ, CLAWDEN_HOME=str(self.home), CLAWDEN_NATS_URL=self.url)

    async def ask(self, verb: ctl.Verb[Req, Rep], request: Req) -> Rep:
        return await control.ask(self.config, verb, request)

    async def stats(self) -> dict[str, Any]:
        """The router's own counters, as its ping reports them."""
        pong = await self.ask(ctl.common.PING.at("router"), ctl.Nothing())
        stats: dict[str, Any] = pong.stats["router"]
        return stats

    def output(self) -> str:
        return (self.home / "router.log").read_text()


def start_router(home: Path, url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CLAWDEN_HOME=str(home), CLAWDEN_NATS_URL=url)
    with (home / "router.log").open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "router"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def wait_ready(router: RouterProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    why = ""
    while True:
        try:
            ping = await control.ask(router.config, ctl.common.PING.at("router"), ctl.Nothing(), timeout=1)
            if ping.ready:
                return
        except control.ControlError as exc:
            why = str(exc)
        assert router.proc.poll() is None, router.output()
        assert time.monotonic() < deadline, f"router never got ready ({why}):\n{router.output()}"
        await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def running_router(home: Path, url: str, runner: str = "") -> AsyncIterator[RouterProcess]:
    """A router on a fresh home at `home`; `runner`: lines for its config's `[runner]` section."""
    setup.init(home)
    if runner:
        cfg = home / "config.toml"
        cfg.write_text(cfg.read_text().replace("[runner]\n", f"[runner]\n{runner}\n", 1))
    r = RouterProcess(home, url, start_router(home, url))
    try:
        await wait_ready(r)
        yield r
    finally:
        stop(r.proc)


@pytest.fixture
async def router(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[RouterProcess]:
    async with running_router(tmp_path / "home", nats_server.url) as r:
        yield r


@pytest.fixture
def js(nc: Client) -> Iterator[JetStreamContext]:
    yield nc.jetstream()


async def collect(
    js: JetStreamContext, durable: str, subject: str, *, want: int, settle: float = 1.0, timeout: float = 60
) -> list[events.Event]:
    """Everything on `subject` once `want` arrived and nothing more came for `settle` seconds."""
    stream = (
        "CLAWDEN_WAKE"
        if subject.startswith(f"{subjects.PREFIX}.wake")
        else ("CLAWDEN_APPROVALS" if subject.startswith(f"{subjects.PREFIX}.approval") else "CLAWDEN_OUTBOUND")
    )
    puller = await bind(js, Consumer(stream, durable, subject), batch=256)
    got: list[events.Event] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = await puller.next(timeout=0.2)
            if not msgs:
                if len(got) >= want and time.monotonic() - quiet_since > settle:
                    break
                continue
            for m in msgs:
                got.append(events.decode(m.data))
                await m.ack()
            quiet_since = time.monotonic()
    finally:
        await puller.stop()
    return got
