"""A real vault (`clawden run vault` on a real NATS server) in front of the fake Anthropic API over TLS, as
`ctl.vault.model-check` meets api.anthropic.com: through `[vault] host_map` and `extra_ca_file`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawden import config as config_mod
from clawden import control, natsserver, setup
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from tests.eventually import eventually
from tests.fakes.anthropic import FakeAnthropic, make_tls

API_KEY = "sk-ant-api03-model-check-key-0123456789"


@dataclass
class ModelVault:
    cfg: config_mod.Config
    fake: FakeAnthropic
    address: str  # where the fake serves api.anthropic.com over TLS
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """`clawden run vault`, until it answers on the bus."""
        proc = self.proc = _spawn(self.env, self.log)

        async def answers() -> bool:
            assert proc.poll() is None, self.log.read_text()
            try:
                await control.ask(self.cfg, vault_ctl.SECRETS_LIST, Nothing(), timeout=2)
            except control.ControlError:
                return False
            return True

        await eventually(answers, timeout=30, message=self.log.read_text)

    async def stop(self) -> None:
        """SIGTERM, as systemd or `clawden up` stops it, and a clean exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(self.proc.wait, 20) == 0, self.log.read_text()

    async def check(self) -> vault_ctl.ModelChecks:
        return await control.ask(self.cfg, vault_ctl.MODEL_CHECK, Nothing(), timeout=vault_ctl.MODEL_CHECK_WAIT + 2)

    async def store(self, value: str, name: str = "anthropic", kind: str = "anthropic", **fields: Any) -> None:
        """A secret stored as `clawden secrets add --replace` stores it."""
        request = vault_ctl.AddSecret(name=name, type=kind, value=value, replace=True, **fields)
        await control.ask(self.cfg, vault_ctl.SECRETS_ADD, request)

    def asked_models(self) -> list[dict[str, str]]:
        """The headers of each `GET /v1/models` the fake was sent."""
        return [r.headers for r in list(self.fake.requests) if r.method == "GET" and r.path == "/v1/models"]


@asynccontextmanager
async def model_vault(
    nats_url: str, *, trusted: bool = True, map_to: str = "", tcp: bool = False
) -> AsyncIterator[ModelVault]:
    """The vault with `API_KEY` as its `anthropic` secret (from keys/anthropic). `trusted`: the fake's CA is its
    extra_ca_file; `map_to`: where its host map sends api.anthropic.com instead of the fake; `tcp`: its gateway has a
    TCP listener, for a test's own agent (`PROXY_TOKEN`)."""
    # The gateway's sockets live under the home: pytest's tmp_path is too long for a socket's path.
    with tempfile.TemporaryDirectory(prefix="clawden-mc-", dir="/tmp") as name:
        folder = Path(name)
        fake = await FakeAnthropic().start()
        tls = make_tls(["api.anthropic.com"], name)
        address = await fake.listen_tls(tls.server_context)
        home = folder / "home"
        cfg = setup.init(home)
        (cfg.keys_dir / "anthropic").write_text(API_KEY + "\n")
        (cfg.keys_dir / "anthropic").chmod(0o600)
        trust = f'extra_ca_file = "{tls.ca_file}"\n' if trusted else ""
        cfg.path("config.toml").write_text(
            f'install_id = "mc"\n[nats]\nurl = "{nats_url}"\n[vault]\n{trust}'
            f'host_map = {{"api.anthropic.com" = "{map_to or address}"}}\n'
            + (f'tcp_listen = "127.0.0.1:{natsserver.free_port()}"\n' if tcp else "")
        )
        env = dict(os.environ, CLAWDEN_HOME=str(home))
        env.pop("ANTHROPIC_API_KEY", None)
        v = ModelVault(config_mod.load(home, environ={}), fake, address, folder / "vault.log", env)
        try:
            await v.start()
            yield v
        finally:
            if v.proc is not None and v.proc.poll() is None:
                v.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(v.proc.wait, 20)
                except subprocess.TimeoutExpired:
                    v.proc.kill()
                    await asyncio.to_thread(v.proc.wait)
            await fake.stop()


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", "vault"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
