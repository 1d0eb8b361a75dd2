"""The vault process: one gateway socket per agent group, the only way out of an agent's container."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from clawden.config import Config
from clawden.runtime import ServiceContext
from services.vault.gateway import Gateway

log = logging.getLogger("clawden.vault")
GROUP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SOCKET_NAME = "gateway.sock"


def model_credential(cfg: Config) -> str:
    """The model key: ANTHROPIC_API_KEY in the vault's own environment, else keys/anthropic."""
    key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
    if key:
        return key
    file = cfg.keys_dir / "anthropic"
    try:
        if file.stat().st_mode & 0o077:
            log.warning("%s is readable by others; chmod 600 it", file)
        return file.read_text().strip()
    except FileNotFoundError:
        return ""


class Vault:
    def __init__(self, cfg: Config, gateway: Gateway) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.listening: dict[str, Path] = {}

    async def open_gateway(self, agent_group: str) -> Path:
        if not GROUP_NAME.match(agent_group):
            raise ValueError(f"bad agent group name {agent_group!r}")
        path = self.listening.get(agent_group)
        if path is None:
            folder = self.cfg.gateway_dir / agent_group
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
            path = folder / SOCKET_NAME
            await self.gateway.listen(agent_group, path)
            self.listening[agent_group] = path
            log.info("gateway for %s listening on %s", agent_group, path, extra={"agent_group": agent_group})
        return path

    async def on_gateway_request(self, data: bytes) -> dict[str, Any]:
        request = json.loads(data)
        return {"socket": str(await self.open_gateway(str(request["agent_group"])))}


async def main(ctx: ServiceContext) -> None:
    cfg = ctx.config
    credential = model_credential(cfg)
    if not credential:
        log.error("no model key: set ANTHROPIC_API_KEY for the vault or write %s", cfg.keys_dir / "anthropic")
    gateway = Gateway(cfg.model.upstream, credential, extra_ca_file=cfg.vault.extra_ca_file or None)
    vault = Vault(cfg, gateway)
    try:
        # Containers that outlived a vault restart reconnect to the same socket paths.
        if cfg.gateway_dir.is_dir():
            for folder in sorted(cfg.gateway_dir.iterdir()):
                if folder.is_dir() and GROUP_NAME.match(folder.name):
                    await vault.open_gateway(folder.name)
        await ctx.endpoint("gateway", vault.on_gateway_request)
        await ctx.ready(f"vault: {len(vault.listening)} gateways")
        await ctx.stopping.wait()
    finally:
        await gateway.close()
