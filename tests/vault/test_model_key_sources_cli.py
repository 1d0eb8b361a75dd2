"""Which of the model key's import sources still holds another key is the vault's to say, not the CLI's: a vault
run by systemd does not see the shell's ANTHROPIC_API_KEY. A real vault on a real NATS server, through the CLI."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import msgspec
import pytest

from clawden import control
from clawden.bus import subjects
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from clawden.owner import connect_cli
from tests.eventually import eventually
from tests.vault.test_service import BOOT_KEY, Vault, short_home, spawn_vault, vault, vault_prefix

__all__ = ["short_home", "vault", "vault_prefix"]  # the fixtures, used here
pytestmark = pytest.mark.timeout(90)

IN_VAULT_ENV = "sk-ant-api03-given-to-the-vaults-unit-0123456"
IN_SHELL = "sk-ant-api03-only-in-the-cli-users-shell-01234"
NEW = "sk-ant-api03-the-key-set-with-the-cli-0123456789"


async def restart_with(vault: Vault, environ: dict[str, str]) -> None:
    """Start the vault again with these variables in its own environment (as a systemd unit's Environment=)."""
    vault.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(vault.proc.wait, 20) == 0, vault.logs()
    vault.proc = spawn_vault(vault.env() | environ, vault.log)

    async def answers() -> bool:
        assert vault.proc.poll() is None, vault.logs()
        try:
            await control.ask(vault.cfg, vault_ctl.SECRETS_LIST, Nothing(), timeout=2)
        except control.ControlError:
            return False
        return True

    await eventually(answers, timeout=30, message=vault.logs)


async def cli_in_shell(vault: Vault, *args: str, shell: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "clawden", *args],
        input=stdin,
        env=vault.env() | shell,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def raw(vault: Vault, verb: str, request: msgspec.Struct) -> bytes:
    """The vault's reply as it travels on the bus."""
    nc = await connect_cli(vault.cfg, 5)
    try:
        return bytes((await nc.request(subjects.ctl("vault", verb), msgspec.json.encode(request), timeout=5)).data)
    finally:
        await nc.close()


async def test_the_vaults_own_environment_is_said_though_the_shell_has_none(vault: Vault) -> None:
    await restart_with(vault, {"ANTHROPIC_API_KEY": IN_VAULT_ENV})
    file = vault.cfg.keys_dir / "anthropic"

    replaced = await vault.cli("secrets", "add", "anthropic", "--type", "anthropic", "--replace", stdin=NEW + "\n")
    removed = await vault.cli("secrets", "remove", "anthropic")

    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stderr.splitlines() == [
        "note: ANTHROPIC_API_KEY in the vault's environment still holds another key; the vault imports it again only "
        "if it changes. Unset it there, or put the new key there.",
        f"note: {file} still holds another key; the vault imports it again only if it changes. "
        "Delete it, or put the new key there.",
    ]
    assert removed.returncode == 0, removed.stderr
    assert (
        "note: ANTHROPIC_API_KEY in the vault's environment still holds a model key; the vault imports it again only "
        "if it changes. Unset it there if that key is done." in removed.stderr
    )
    assert IN_VAULT_ENV not in replaced.stderr + removed.stderr + vault.logs()


async def test_a_key_in_the_cli_users_shell_is_not_taken_for_the_vaults(vault: Vault) -> None:
    """The vault has no ANTHROPIC_API_KEY and its file holds the key set: nothing to say, whatever the shell has."""
    replaced = await cli_in_shell(
        vault,
        *("secrets", "add", "anthropic", "--type", "anthropic", "--replace"),
        shell={"ANTHROPIC_API_KEY": IN_SHELL},
        stdin=BOOT_KEY + "\n",
    )

    assert replaced.returncode == 0, replaced.stderr
    assert "note:" not in replaced.stderr, replaced.stderr


async def test_the_reply_names_the_source_and_never_carries_a_key(vault: Vault) -> None:
    file = vault.cfg.keys_dir / "anthropic"
    model = vault_ctl.AddSecret(name="anthropic", type="anthropic", value=NEW, replace=True)
    other = vault_ctl.AddSecret(name="gh", type="generic", value="g" * 20, host="api.github.com", header="X-Token")

    added = await raw(vault, "secrets-add", model)
    unrelated = await raw(vault, "secrets-add", other)
    removed = await raw(vault, "secrets-remove", vault_ctl.Named(name="anthropic"))

    said = vault_ctl.ModelKeySource(kind="file", where=str(file))
    assert msgspec.json.decode(added, type=vault_ctl.SecretAdded).model_key_sources == [said]
    assert msgspec.json.decode(unrelated, type=vault_ctl.SecretAdded).model_key_sources == []
    assert msgspec.json.decode(removed, type=vault_ctl.Removed).model_key_sources == [said]
    for reply in (added, removed):
        assert BOOT_KEY.encode() not in reply and NEW.encode() not in reply


def test_a_reply_from_a_vault_of_before_decodes_with_no_source_said() -> None:
    secret = {
        "name": "anthropic",
        "kind": "anthropic",
        "host_pattern": "api.anthropic.com",
        "path_pattern": "*",
        "header_name": "",
        "value_format": "{value}",
        "param_name": "",
        "grants": ["*"],
        "created_at": 1.0,
    }
    added = msgspec.json.decode(msgspec.json.encode({"secret": secret, "created": False}), type=vault_ctl.SecretAdded)
    removed = msgspec.json.decode(b'{"removed": "anthropic"}', type=vault_ctl.Removed)

    assert added.model_key_sources == [] and removed.model_key_sources == []
