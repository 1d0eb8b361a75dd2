"""A bridge from another package: registered through the `clawden.channels` entry point group, it runs as
`clawden run channel@<name>` without any change to Clawden, and `clawden channels list` shows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from clawden import setup
from tests.channels.harness import wait_for
from tests.conftest import NatsServer

ACME = """
import asyncio

from services.channels.bridge import Bridge, Capabilities
from services.channels.service import serve


class AcmeBridge(Bridge):
    name = "acme"
    capabilities = Capabilities(max_text=500, reactions=True)

    async def listen(self, inbound):
        while True:
            inbound.alive()
            await asyncio.sleep(1)

    async def send_text(self, route, text, *, reply_to, buttons, key):
        return "acme-1"


async def main(ctx):
    await serve(ctx, AcmeBridge())
"""


def third_party_package(root: Path) -> Path:
    """What `pip install acme-clawden-bridge` would leave in site-packages."""
    root.mkdir()
    (root / "acme_bridge.py").write_text(textwrap.dedent(ACME))
    dist = root / "acme_clawden_bridge-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-clawden-bridge\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[clawden.channels]\nacme = acme_bridge:main\n")
    return root


def test_a_bridge_from_another_package_runs_and_is_listed(tmp_path: Path, nats_server: NatsServer) -> None:
    home = tmp_path / "home"
    setup.init(home)
    site = third_party_package(tmp_path / "site")
    env = dict(
        os.environ,
        CLAWDEN_HOME=str(home),
        CLAWDEN_NATS_URL=nats_server.url,
        PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    )
    log = tmp_path / "acme.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "channel@acme"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: "channel@acme ready" in log.read_text(), 30, lambda: log.read_text())
        listing = subprocess.run(
            [sys.executable, "-m", "clawden", "channels", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
        assert "acme-clawden-bridge 1.0" in lines["acme"] and "running" in lines["acme"], listing.stdout
        # Telegram ships with Clawden: listed by Clawden's own entry point (or as built in from a
        # source tree that was never pip-installed).
        telegram = lines["telegram"]
        assert ("clawden " in telegram or "built in" in telegram) and "not running" in telegram
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_unknown_bridge_is_a_clear_error(tmp_path: Path, nats_server: NatsServer) -> None:
    home = tmp_path / "home"
    setup.init(home)
    env = dict(os.environ, CLAWDEN_HOME=str(home), CLAWDEN_NATS_URL=nats_server.url)
    out = subprocess.run(
        [sys.executable, "-m", "clawden", "run", "channel@nosuch"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "no channel bridge named 'nosuch'" in out.stderr
