"""Whom `clawden secrets add` grants a secret when no --agent is given: least privilege, as OneCLI v2's per-agent
grants. A real vault and, where the test says so, a real router on one NATS server, driven through the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as vault_ctl
from tests.conftest import NatsServer
from tests.router.conftest import RouterProcess, start_router, stop, wait_ready
from tests.vault.test_service import GITHUB, Vault, short_home, vault, vault_prefix

__all__ = ["short_home", "vault", "vault_prefix"]  # the fixtures, used here
pytestmark = pytest.mark.timeout(120)

GH = ("--type", "generic", "--host", "api.github.com", "--header", "Authorization", "--format", "Bearer {value}")


@pytest.fixture
async def routed(vault: Vault, nats_server: NatsServer) -> AsyncIterator[Vault]:
    """The vault with a router beside it in the same home: the router knows one agent group, main."""
    router = RouterProcess(vault.home, nats_server.url, start_router(vault.home, nats_server.url))
    try:
        await wait_ready(router)
        yield vault
    finally:
        stop(router.proc)


async def grants(vault: Vault) -> dict[str, list[str]]:
    return {s.name: s.grants for s in (await vault.ask(vault_ctl.SECRETS_LIST, Nothing())).secrets}


async def test_with_one_agent_group_a_secret_goes_to_that_group_by_name(routed: Vault) -> None:
    added = await routed.cli("secrets", "add", "gh", *GH, stdin=GITHUB + "\n")

    assert added.returncode == 0, added.stderr
    assert "stored gh: Authorization: Bearer {value} for api.github.com (any path) (granted to main)" in added.stdout
    assert "to grant it to others: clawden secrets grant gh --agent G" in added.stdout
    assert (await grants(routed))["gh"] == ["main"]  # by name: a group added later does not get it


async def test_with_several_groups_a_secret_without_agent_is_refused_and_nothing_stored(routed: Vault) -> None:
    assert (await routed.cli("groups", "create", "work")).returncode == 0
    before = await grants(routed)

    refused = await routed.cli("secrets", "add", "gh", *GH, stdin=GITHUB + "\n")

    assert refused.returncode != 0
    assert "say which agent groups may use gh (there are main, work)" in refused.stderr
    assert "--agent G (repeatable), or --agent '*' for every agent group, now and later" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert await grants(routed) == before

    everyone = await routed.cli("secrets", "add", "gh", *GH, "--agent", "*", stdin=GITHUB + "\n")
    assert everyone.returncode == 0, everyone.stderr
    assert "(granted to every agent group)" in everyone.stdout and "only agent group" not in everyone.stdout
    both = await routed.cli("secrets", "add", "gh2", *GH, "--agent", "main", "--agent", "work", stdin="x" * 20)
    assert both.returncode == 0, both.stderr
    assert (await grants(routed))["gh"] == ["*"] and (await grants(routed))["gh2"] == ["main", "work"]
    # The same name again without --replace: what is wrong is that it exists, not which groups (the vault says it).
    again = await routed.cli("secrets", "add", "gh", *GH, stdin=GITHUB + "\n")
    assert again.returncode != 0 and "a secret named gh exists; add --replace" in again.stderr, again.stderr
    assert (await grants(routed))["gh"] == ["*"]


async def test_the_model_key_still_goes_to_every_group_and_openai_does_not(routed: Vault) -> None:
    assert (await routed.cli("groups", "create", "work")).returncode == 0
    assert (await routed.cli("secrets", "remove", "anthropic")).returncode == 0

    model = await routed.cli("secrets", "add", "anthropic", "--type", "anthropic", stdin="sk-ant-api03-" + "k" * 30)
    openai = await routed.cli("secrets", "add", "openai", "--type", "openai", stdin="sk-proj-" + "o" * 30)

    assert model.returncode == 0 and "(granted to every agent group)" in model.stdout, model.stderr
    assert openai.returncode != 0 and "say which agent groups may use openai" in openai.stderr
    assert await grants(routed) == {"anthropic": ["*"]}


async def test_a_replacement_without_agent_keeps_the_grants_it_had(routed: Vault) -> None:
    assert (await routed.cli("secrets", "add", "gh", *GH, stdin=GITHUB + "\n")).returncode == 0  # to main
    assert (await routed.cli("groups", "create", "work")).returncode == 0

    replaced = await routed.cli("secrets", "add", "gh", *GH, "--replace", stdin="ghp_" + "n" * 36)
    model = await routed.cli("secrets", "grant", "anthropic", "--agent", "*", "--revoke")
    assert (
        model.returncode == 0 and (await routed.cli("secrets", "grant", "anthropic", "--agent", "main")).returncode == 0
    )
    key = await routed.cli(
        "secrets", "add", "anthropic", "--type", "anthropic", "--replace", stdin="sk-ant-api03-" + "r" * 30
    )

    assert replaced.returncode == 0, replaced.stderr
    assert (
        "replaced gh: Authorization: Bearer {value} for api.github.com (any path) (granted to main, as before)"
        in replaced.stdout
    )
    assert key.returncode == 0 and "(granted to main, as before)" in key.stdout, key.stderr
    assert await grants(routed) == {"gh": ["main"], "anthropic": ["main"]}


async def test_a_replace_of_a_secret_not_stored_yet_is_granted_as_a_new_one(routed: Vault) -> None:
    assert (await routed.cli("groups", "create", "work")).returncode == 0

    refused = await routed.cli("secrets", "add", "gh", *GH, "--replace", stdin=GITHUB + "\n")
    named = await routed.cli("secrets", "add", "gh", *GH, "--replace", "--agent", "work", stdin=GITHUB + "\n")

    assert refused.returncode != 0 and "(there are main, work)" in refused.stderr
    assert named.returncode == 0 and "stored gh" in named.stdout, named.stderr
    assert (await grants(routed))["gh"] == ["work"]


async def test_with_no_agent_group_left_a_secret_without_agent_is_refused(routed: Vault) -> None:
    assert (await routed.cli("groups", "delete", "main", "--yes")).returncode == 0

    refused = await routed.cli("secrets", "add", "gh", *GH, stdin=GITHUB + "\n")

    assert refused.returncode != 0
    assert "there is no agent group yet to grant gh to: create one, or give --agent G" in refused.stderr
    assert "gh" not in await grants(routed)


async def test_a_vault_on_its_own_asks_for_an_explicit_agent(vault: Vault) -> None:
    refused = await vault.cli("secrets", "add", "gh", *GH, stdin=GITHUB + "\n")

    assert refused.returncode != 0
    assert "say which agent groups may use gh: --agent G (repeatable), or --agent '*'" in refused.stderr
    assert "the router could not be asked which groups there are" in refused.stderr
    assert "gh" not in await grants(vault)

    named = await vault.cli("secrets", "add", "gh", *GH, "--agent", "main", stdin=GITHUB + "\n")
    assert named.returncode == 0, named.stderr
    assert "not checked that agent group main exists" in named.stderr
    assert (await grants(vault))["gh"] == ["main"]


async def test_the_vault_keeps_a_replaced_secrets_grants_when_none_are_named(vault: Vault) -> None:
    """The control verb, as the dashboard and a CLI of before send it: none named on a replacement kept nothing
    and granted the new value to every group. A new secret with none named is still every group's (the HTTP API's
    OneCLI v1 default)."""
    gh = vault_ctl.AddSecret(name="gh", type="generic", value=GITHUB, host="api.github.com", header="Authorization")
    added = await vault.ask(vault_ctl.SECRETS_ADD, gh)
    await vault.ask(vault_ctl.SECRETS_GRANT, vault_ctl.Grant(name="gh", agents=["*"], revoke=True))
    await vault.ask(vault_ctl.SECRETS_GRANT, vault_ctl.Grant(name="gh", agents=["kids"]))

    replaced = await vault.ask(
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(
            name="gh", type="generic", value="ghp_" + "z" * 36, host="api.github.com", header="X-Token", replace=True
        ),
    )
    widened = await vault.ask(
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(
            name="gh", type="generic", value=GITHUB, host="api.github.com", header="X-Token", replace=True, agents=["*"]
        ),
    )

    assert added.secret.grants == ["*"]
    assert (replaced.created, replaced.secret.grants, replaced.secret.header_name) == (False, ["kids"], "X-Token")
    assert widened.secret.grants == ["*"]
