"""What `clawden secrets add` and `clawden egress` print, as a new user meets them: a real vault (and, where the test
says so, a real router) on a real NATS server, driven through the CLI.

1. A wrong model key was stored with "replaced anthropic …" and exit 0, and only the first chat, minutes later, found
   it wrong: the vault's model check now runs at once and says so (the key is stored all the same).
2. "for api.github.com*" read like the host pattern the README warns about.
3. `clawden egress` without a group was an error, not every group's mode.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import setup
from clawden.bus.ctl import vault as vault_ctl
from clawden.natsserver import free_port
from tests.conftest import NatsServer
from tests.fakes.anthropic import Error
from tests.vault.model_vault import API_KEY, model_vault
from tests.vault.test_secret_grants_cli import GH, routed
from tests.vault.test_service import GITHUB, Vault, short_home, vault, vault_prefix

__all__ = ["routed", "short_home", "vault", "vault_prefix"]  # the fixtures, used here
pytestmark = [pytest.mark.timeout(120), pytest.mark.nats, pytest.mark.process]

WRONG = "sk-ant-api03-WRONGKEY-not-the-one-anthropic-knows"
REPLACE = "`clawden secrets add anthropic --type anthropic --replace`"


async def clawden(home: str | Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    env.pop("ANTHROPIC_API_KEY", None)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "clawden", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def said(stderr: str) -> list[str]:
    """What stderr says past the note on keys/anthropic, which still holds the key the vault started with."""
    return [line for line in stderr.splitlines() if not line.startswith("note: ")]


# --- the model key checked at once ---------------------------------------------------------------------------


async def test_a_wrong_model_key_is_stored_with_a_warning_that_the_model_api_refused_it(
    nats_server: NatsServer,
) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {API_KEY}

        added = await clawden(
            v.cfg.home, "secrets", "add", "anthropic", "--type", "anthropic", "--replace", stdin=WRONG
        )

    assert added.returncode == 0, added.stderr  # stored is stored: the check only warns
    assert added.stdout.startswith(
        "replaced anthropic: x-api-key (or Bearer for OAuth) for api.anthropic.com (any path)"
    )
    warning, fix = said(added.stderr)
    assert warning.startswith("warning: api.anthropic.com (mapped to ")
    assert warning.endswith(
        "rejected anthropic (401 authentication_error: invalid x-api-key): the key is wrong or revoked"
    ), warning
    assert fix.startswith(f"  fix: store a working key: {REPLACE}"), fix
    assert WRONG not in added.stdout + added.stderr


async def test_a_right_model_key_is_said_accepted(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {API_KEY}

        added = await clawden(
            v.cfg.home, "secrets", "add", "anthropic", "--type", "anthropic", "--replace", stdin=API_KEY
        )

    assert added.returncode == 0 and said(added.stderr) == [], added.stderr
    assert added.stdout.splitlines()[-1] == "api.anthropic.com accepted it"


async def test_a_model_api_out_of_reach_or_failing_leaves_the_key_not_checked(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url, map_to=f"127.0.0.1:{free_port()}") as v:
        unreached = await clawden(
            v.cfg.home, "secrets", "add", "anthropic", "--type", "anthropic", "--replace", stdin=API_KEY
        )
    async with model_vault(nats_server.url) as v:
        v.fake.models_error = Error(529, "Overloaded")
        failing = await clawden(
            v.cfg.home, "secrets", "add", "anthropic", "--type", "anthropic", "--replace", stdin=API_KEY
        )

    assert unreached.returncode == 0 and failing.returncode == 0
    assert said(unreached.stderr)[0].startswith("not checked: tried from the vault: "), unreached.stderr
    assert said(failing.stderr)[0].startswith("not checked: api.anthropic.com (mapped to "), failing.stderr
    assert "answered 529 overloaded_error: Overloaded to anthropic" in failing.stderr
    assert "warning" not in unreached.stderr + failing.stderr


@pytest.fixture
async def old_vault(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Path]:
    """A vault from before `ctl.vault.model-check`: it stores the secret and knows no such verb. The home's CLI
    reaches it on the same NATS server."""
    home = tmp_path / "home"
    cfg = setup.init(home)
    cfg.path("config.toml").write_text(f'install_id = "old"\n[nats]\nurl = "{nats_server.url}"\n')
    config_mod.load(home)
    stored = vault_ctl.SecretAdded(
        secret=vault_ctl.SecretInfo(
            name="anthropic",
            kind="anthropic",
            host_pattern="api.anthropic.com",
            path_pattern="*",
            header_name="x-api-key",
            value_format="{value}",
            param_name="",
            grants=["*"],
            created_at=0.0,
        ),
        created=True,
    )

    async def answer(msg: Msg) -> None:
        await msg.respond(msgspec.json.encode(stored))

    nc = Client()
    await nc.connect(nats_server.url)
    await nc.subscribe(vault_ctl.SECRETS_ADD.subject, cb=answer)
    await nc.flush()
    try:
        yield home
    finally:
        await nc.close()


async def test_a_vault_too_old_for_the_check_leaves_the_key_not_checked_at_once(old_vault: Path) -> None:
    added = await clawden(old_vault, "secrets", "add", "anthropic", "--type", "anthropic", stdin=API_KEY)

    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("stored anthropic: ")
    assert added.stderr.startswith("not checked on the model API: the vault is older than its model check"), (
        added.stderr
    )


# --- where a secret goes --------------------------------------------------------------------------------------


async def test_a_secret_for_every_path_says_any_path_not_a_star_after_the_host(routed: Vault) -> None:
    every = await routed.cli("secrets", "add", "gh", *GH, stdin=GITHUB + "\n")
    some = await routed.cli("secrets", "add", "gh2", *GH, "--path", "/repos/*", stdin=GITHUB + "\n")

    assert every.returncode == 0 and some.returncode == 0, every.stderr + some.stderr
    assert "stored gh: Authorization: Bearer {value} for api.github.com (any path) (granted to main)" in every.stdout
    assert "stored gh2: Authorization: Bearer {value} for api.github.com/repos/* (granted to main)" in some.stdout
    assert "com*" not in every.stdout + some.stdout


# --- every group's egress -------------------------------------------------------------------------------------


async def test_egress_without_a_group_lists_each_groups_mode(routed: Vault) -> None:
    assert (await routed.cli("groups", "create", "work")).returncode == 0
    assert (await routed.cli("egress", "work", "allowlist")).returncode == 0

    listed = await routed.cli("egress")

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["main: egress open", "work: egress allowlist"]


async def test_egress_without_a_group_and_no_router_asks_for_a_group(vault: Vault) -> None:
    refused = await vault.cli("egress")

    assert refused.returncode != 0
    assert refused.stderr.startswith("clawden: name an agent group (clawden egress GROUP): the router could not be")
    assert "Traceback" not in refused.stderr
