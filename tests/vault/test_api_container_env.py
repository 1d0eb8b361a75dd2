"""`/v1/container-config` names the model placeholder of the secret the gateway will inject: of several anthropic
secrets granted to an agent, the one `precedence` chooses for its model calls decides whether the container is told
CLAUDE_CODE_OAUTH_TOKEN (an OAuth token) or ANTHROPIC_API_KEY (an API key), not whether any granted one is OAuth."""

from __future__ import annotations

import httpx
import pytest

from services.vault.api import model_key
from services.vault.catalog import Catalog, Credential
from tests.vault.conftest import secret
from tests.vault.test_api import Vault, short_home, vault

__all__ = ["short_home", "vault"]  # the fixtures, used here

OAUTH = "sk-ant-oat01-container-env-test-0123456789"
API_KEY = "sk-ant-api03-container-env-test-0123456789"
MODEL = "api.anthropic.com"


def chosen(*credentials: Credential, group: str = "builder") -> str | None:
    key = model_key(Catalog(credentials=credentials).view(group))
    return key.name if key is not None else None


@pytest.mark.parametrize(
    ("credentials", "injected"),
    [
        # A grant naming the group wins over one to every group, either way round.
        ((secret("oauth", "anthropic", MODEL, OAUTH), secret("key", "anthropic", MODEL, API_KEY, ("builder",))), "key"),
        (
            (secret("key", "anthropic", MODEL, API_KEY), secret("oauth", "anthropic", MODEL, OAUTH, ("builder",))),
            "oauth",
        ),
        # An exact host wins over a wildcard; the longer path over every path.
        ((secret("oauth", "anthropic", "*.anthropic.com", OAUTH), secret("key", "anthropic", MODEL, API_KEY)), "key"),
        (
            (
                secret("key", "anthropic", MODEL, API_KEY),
                secret("oauth", "anthropic", MODEL, OAUTH, path_pattern="/v1/*"),
            ),
            "oauth",
        ),
        # A tie stored before the vault refused them: the first added is injected.
        (
            (
                secret("oauth", "anthropic", MODEL, OAUTH, created_at=2),
                secret("key", "anthropic", MODEL, API_KEY, created_at=1),
            ),
            "key",
        ),
        (
            (
                secret("oauth", "anthropic", MODEL, OAUTH, created_at=1),
                secret("key", "anthropic", MODEL, API_KEY, created_at=2),
            ),
            "oauth",
        ),
        # A key that no model call gets is no model key.
        ((secret("oauth", "anthropic", MODEL, OAUTH, path_pattern="/v1/models"),), None),
        ((secret("oauth", "anthropic", MODEL, OAUTH, ("reviewer",)),), None),
    ],
)
def test_the_model_key_is_the_one_precedence_injects_into_a_model_call(
    credentials: tuple[Credential, ...], injected: str | None
) -> None:
    assert chosen(*credentials) == injected


async def placeholders(api: httpx.AsyncClient, agent: str) -> set[str]:
    config = (await api.get("/v1/container-config", params={"agent": agent})).json()
    return {name for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN") if name in config["env"]}


async def test_container_config_names_the_placeholder_of_the_model_key_the_agent_gets(vault: Vault) -> None:
    key = await vault.new_key("orchestrator")
    async with vault.client(key) as api:
        for agent in ("builder", "reviewer"):
            await api.post("/v1/agents", json={"name": agent.title(), "identifier": agent})
        # A subscription token for every agent, and the builder's own API key, which wins for it.
        for name, value, agents in (("claude-oauth", OAUTH, None), ("builder-key", API_KEY, ["builder"])):
            added = await api.post(
                "/v1/secrets", json={"name": name, "type": "anthropic", "value": value, "agents": agents}
            )
            assert added.status_code == 201, added.text
        builder, reviewer = await placeholders(api, "builder"), await placeholders(api, "reviewer")
        # The other way round: an API key for every agent, and the reviewer's own subscription token.
        for name in ("claude-oauth", "builder-key"):
            await api.delete(f"/v1/secrets/{name}")
        for name, value, agents in (("claude-key", API_KEY, None), ("reviewer-oauth", OAUTH, ["reviewer"])):
            added = await api.post(
                "/v1/secrets", json={"name": name, "type": "anthropic", "value": value, "agents": agents}
            )
            assert added.status_code == 201, added.text
        builder_after, reviewer_after = await placeholders(api, "builder"), await placeholders(api, "reviewer")

    assert (builder, reviewer) == ({"ANTHROPIC_API_KEY"}, {"CLAUDE_CODE_OAUTH_TOKEN"})
    assert (builder_after, reviewer_after) == ({"ANTHROPIC_API_KEY"}, {"CLAUDE_CODE_OAUTH_TOKEN"})
