"""A model key the API refuses is the vault's trouble: ping carries it (`clawden status`: degraded, with the
`clawden secrets add … --replace` that mends it) from the check that found it until a check passes or the key is
replaced; a check that cannot reach the API is no fault of the key's and leaves the trouble as it was. A restart
keeps it while the refused key is still the one stored."""

from __future__ import annotations

import hashlib
import sqlite3
import ssl

import httpx
import pytest

from clawden import control, natsserver
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from clawden.bus.ctl.common import PING
from clawden.vaultfiles import CA_CERT, VAULT_DB, vault_dir
from tests.conftest import NatsServer
from tests.fakes.anthropic import Error
from tests.vault.model_vault import API_KEY, ModelVault, model_vault

pytestmark = [pytest.mark.timeout(90), pytest.mark.nats, pytest.mark.process]

REFUSED = (
    "the model API refused the anthropic key (401 authentication_error: invalid x-api-key); set the right one: "
    "`clawden secrets add anthropic --type anthropic --replace`"
)


async def trouble(v: ModelVault) -> str:
    return (await control.ask(v.cfg, PING.at("vault"), Nothing())).trouble


async def test_a_refused_key_is_the_vaults_trouble_until_a_check_passes(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {"sk-ant-api03-the-key-anthropic-knows"}
        assert await trouble(v) == ""

        await v.check()
        refused = await trouble(v)
        v.fake.api_keys = {API_KEY}  # revoked, then honoured again (say, a billing hold lifted)
        await v.check()

        assert refused == REFUSED
        assert await trouble(v) == ""


async def test_a_refused_key_replaced_is_no_longer_the_trouble(nats_server: NatsServer) -> None:
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {"sk-ant-api03-the-key-anthropic-knows"}
        await v.check()
        assert await trouble(v) == REFUSED

        await v.store("sk-ant-api03-the-key-anthropic-knows")

        assert await trouble(v) == ""
        assert [c.outcome for c in (await v.check()).checks] == ["accepted"]
        assert await trouble(v) == ""


async def test_an_api_out_of_reach_is_not_the_keys_trouble(nats_server: NatsServer) -> None:
    nowhere = f"127.0.0.1:{natsserver.free_port()}"  # nothing listens there
    async with model_vault(nats_server.url, map_to=nowhere) as v:
        [check] = (await v.check()).checks

        assert check.outcome == "unreachable"
        assert await trouble(v) == ""


def test_a_refusal_of_a_key_replaced_while_it_was_checked_is_not_recorded_for_the_new_one() -> None:
    """A check runs for seconds: a key replaced meanwhile must not inherit the old one's refusal."""
    from clawden.bus.ctl import vault as vault_ctl
    from services.vault.catalog import Catalog, Credential, Secret
    from services.vault.modelcheck import RefusedKeys

    said: list[str] = []
    refused = RefusedKeys(said.append)
    model = Secret(name="anthropic", kind="anthropic", host_pattern="api.anthropic.com")
    old, new = Credential(model, "sk-ant-old"), Credential(model, "sk-ant-new")
    rejected = vault_ctl.ModelCheck(name="anthropic", outcome="rejected", status=401, message="invalid x-api-key")
    refused.stored(Catalog(credentials=(new,)))  # replaced while the old key's check was out
    refused.checked(old, rejected)
    assert (refused.line, said) == ("", [])
    refused.checked(new, rejected)  # the new key's own refusal is the trouble
    assert refused.line.startswith("the model API refused the anthropic key (401 invalid x-api-key)")


async def test_an_agents_model_call_the_api_refuses_is_the_trouble_until_one_is_answered(
    nats_server: NatsServer,
) -> None:
    """No check needed: the gateway tells the vault the API refused the key on an agent's own call (a key revoked
    after it was checked), and the next call it answers clears it."""
    async with model_vault(nats_server.url, tcp=True) as v:
        proxy = await control.ask(v.cfg, vault_ctl.PROXY_TOKEN, vault_ctl.GroupRequest(agent_group="main"))
        trust = ssl.create_default_context(cafile=str(v.cfg.keys_dir / CA_CERT))
        turn = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(proxy=proxy.proxy_url, verify=trust, trust_env=False, timeout=10) as agent:
            v.fake.script(Error(401, "invalid x-api-key"), any_request=True)
            refused = await agent.post("https://api.anthropic.com/v1/messages", json=turn)
            assert (refused.status_code, refused.headers["x-should-retry"]) == (401, "false")
            assert await trouble(v) == (
                "the model API refused the anthropic key (401 to an agent's model call); set the right one: "
                "`clawden secrets add anthropic --type anthropic --replace`"
            )
            answered = await agent.post("https://api.anthropic.com/v1/messages", json=turn)
            assert answered.status_code == 200
            assert await trouble(v) == ""


def recorded(v: ModelVault) -> list[tuple[str, ...]]:
    """The refusals vault.db holds."""
    db = sqlite3.connect(vault_dir(v.cfg) / VAULT_DB)
    try:
        return db.execute("SELECT secret, digest_sealed, answer FROM model_key_refusals").fetchall()
    finally:
        db.close()


async def test_a_refused_key_is_still_the_trouble_after_a_restart(nats_server: NatsServer) -> None:
    """The vault stopped and started again (an upgrade, a reboot) with the refused key still stored: the trouble is
    there at once, with the words the check gave, before any check or agent's call."""
    async with model_vault(nats_server.url) as v:
        v.fake.api_keys = {"sk-ant-api03-the-key-anthropic-knows"}
        await v.check()
        assert await trouble(v) == REFUSED
        asked = len(v.asked_models())

        await v.stop()
        await v.start()

        assert await trouble(v) == REFUSED
        assert len(v.asked_models()) == asked  # no check told it
        # Kept by a sealed digest: neither the key nor its bare sha256 is in vault.db.
        [(secret, sealed, _answer)] = recorded(v)
        assert (
            secret == "anthropic"
            and API_KEY not in sealed
            and hashlib.sha256(API_KEY.encode()).hexdigest() not in sealed
        )


async def test_a_refused_key_replaced_while_the_vault_was_down_is_not_the_trouble(nats_server: NatsServer) -> None:
    """A vault that is down takes a new key only where it is given outside it (keys/anthropic, or ANTHROPIC_API_KEY),
    imported at its next start: the refusal of the key it replaced is not the trouble, and is dropped."""
    async with model_vault(nats_server.url) as v:
        good = "sk-ant-api03-the-key-anthropic-knows"
        v.fake.api_keys = {good}
        await v.check()
        assert await trouble(v) == REFUSED

        await v.stop()
        (v.cfg.keys_dir / "anthropic").write_text(good + "\n")
        await v.start()

        assert await trouble(v) == ""
        await v.stop()
        assert recorded(v) == []
