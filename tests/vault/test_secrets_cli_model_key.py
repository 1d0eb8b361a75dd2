"""The two defects a new user hit, as they met them: `clawden run vault` on a real NATS server, changed with
`clawden secrets`, restarted, and an agent's model call through the gateway.

1. A key corrected (or removed) with `clawden secrets` came back from keys/anthropic at the next start.
2. Two more anthropic secrets beside `anthropic` were all injected into one model call.
"""

from __future__ import annotations

import asyncio
import json
import signal

import msgspec
import pytest
from nats.aio.client import Client

from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from services.vault.catalog import Secret
from services.vault.sealing import Sealer, load_key
from services.vault.store import Store
from tests.eventually import eventually
from tests.vault.test_service import (
    BOOT_KEY,
    Vault,
    agent_client,
    bus,
    restart,
    short_home,
    start,
    vault,
    vault_prefix,
)

__all__ = ["bus", "short_home", "vault", "vault_prefix"]  # the fixtures, used here
pytestmark = pytest.mark.timeout(90)

GOOD = "sk-ant-api03-the-corrected-key-0123456789"
SECOND = "sk-ant-api03-a-second-model-key-01234567"


async def stop(vault: Vault) -> None:
    vault.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(vault.proc.wait, 20) == 0, vault.logs()


async def model_call(vault: Vault, group: str = "main") -> bytes:
    """The x-api-key a model call of ``group`` reaches the model API with."""
    client, server = await agent_client(vault, group)
    async with client:
        response = await client.post(
            "https://api.anthropic.com/v1/messages", content=b"{}", headers={"x-api-key": "clawden-managed"}
        )
    server.close()
    assert response.status_code == 200, response.text
    sent = [v for k, v in vault.site.received[-1].headers if k.lower() == b"x-api-key"]
    assert len(sent) == 1, sent
    return sent[0]


async def test_a_corrected_key_survives_a_restart_and_the_cli_says_the_file_is_stale(vault: Vault) -> None:
    replaced = await vault.cli("secrets", "add", "anthropic", "--type", "anthropic", "--replace", stdin=GOOD + "\n")
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.startswith("replaced anthropic")
    file = vault.cfg.keys_dir / "anthropic"
    assert (
        f"note: {file} still holds another key; the vault imports it again only if it changes. "
        "Delete it, or put the new key there." in replaced.stderr
    )

    await restart(vault)

    assert await model_call(vault) == GOOD.encode()
    assert f"{file} holds a model key other than the secret anthropic (changed with `clawden secrets`)" in vault.logs()

    removed = await vault.cli("secrets", "remove", "anthropic")
    assert removed.returncode == 0, removed.stderr
    assert "still holds a model key; the vault imports it again only if it changes. Delete it" in removed.stderr
    await restart(vault)
    listed = await vault.ask(vault_ctl.SECRETS_LIST, Nothing())
    assert "anthropic" not in {s.name for s in listed.secrets}

    file.write_text(SECOND + "\n")  # the file changed: it gives the key again
    await restart(vault)
    assert await model_call(vault) == SECOND.encode()
    assert GOOD not in vault.logs() and BOOT_KEY not in vault.logs() and SECOND not in vault.logs()


async def test_a_second_model_key_for_every_group_is_refused_and_one_for_a_group_wins_there(vault: Vault) -> None:
    tied = await vault.cli("secrets", "add", "anth2", "--type", "anthropic", stdin=SECOND + "\n")
    assert tied.returncode != 0
    assert "anth2 would set x-api-key on the same requests as anthropic (api.anthropic.com, granted to" in tied.stderr
    assert "`clawden secrets add anthropic --type anthropic --replace`" in tied.stderr
    assert "--agent GROUP" in tied.stderr and "`clawden secrets remove anthropic`" in tied.stderr

    narrower = await vault.cli("secrets", "add", "anth2", "--type", "anthropic", "--agent", "work", stdin=SECOND + "\n")
    assert narrower.returncode == 0, narrower.stderr
    widened = await vault.cli("secrets", "grant", "anth2", "--agent", "*")
    assert widened.returncode != 0 and "granting it so is refused" in widened.stderr

    assert await model_call(vault, "work") == SECOND.encode()
    assert await model_call(vault, "main") == BOOT_KEY.encode()


async def test_ties_stored_before_the_check_inject_the_oldest_and_are_said_once(vault: Vault, bus: Client) -> None:
    """The reported vault.db: anth2 and anth4 beside anthropic, all for every group."""
    events: list[ev.AuditEvent] = []

    async def record(msg: object) -> None:
        events.append(msgspec.json.decode(msg.data, type=ev.AuditEvent))  # type: ignore[attr-defined]

    await bus.subscribe("clawden.event.vault.secrets-tied", cb=record)
    await bus.flush()
    await stop(vault)
    store = Store.open(vault.cfg.data_dir / "vault" / "vault.db")
    sealer = Sealer(load_key(vault.cfg.keys_dir / "vault.key"))
    for name in ("anth4", "anth2"):  # as an older vault stored them, after anthropic
        secret = Secret(name=name, kind="anthropic", host_pattern="api.anthropic.com", grants=("*",))
        store.put_secret(secret, sealer.seal(SECOND, f"secret:{name}"))
    store.close()
    await start(vault)

    assert await model_call(vault) == BOOT_KEY.encode()  # anthropic's, the one added first

    async def audited() -> list[dict[str, object]] | None:
        done = await vault.cli("audit", "--agent", "main", "--since", "5m", "--json")
        records = [r for r in json.loads(done.stdout) if r["path"] == "/v1/messages"]
        return records or None

    assert [r["injected"] for r in await eventually(audited, timeout=15)] == ["anthropic"]
    told = await eventually(lambda: events if len(events) == 2 else None, timeout=10)
    assert sorted((e.fields["injected"], e.fields["left_out"]) for e in told) == [
        ("anthropic", "anth2"),
        ("anthropic", "anth4"),
    ]
    other = vault_ctl.AddSecret(name="gh", type="generic", value="g" * 20, host="api.github.com", header="X-Token")
    await vault.ask(vault_ctl.SECRETS_ADD, other)  # the catalog is loaded again
    assert vault.logs().count("secrets anthropic and anth2 tie") == 1  # said once, not at every change
