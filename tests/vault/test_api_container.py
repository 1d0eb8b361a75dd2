"""The vault's HTTP API beyond item 1: agents and rules changed and deleted at OneCLI's paths, and a
OneCLI-shaped orchestrator that starts a real container with no network at all from what
`/v1/container-config?transport=socket` says, whose request reaches the site with the injected secret."""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from docker.types import Mount

from clawden import agentcontainer
from tests.vault.test_api import SITE, VALUE, Vault, short_home, vault

pytestmark = [pytest.mark.timeout(120), pytest.mark.nats, pytest.mark.process]
__all__ = ["short_home", "vault"]  # the fixtures, used here

SCRIPT = r"""
import asyncio, json, os, sys, urllib.error, urllib.request
from clawden_agent.relay import serve_relay

def call(url, method):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]

async def main():
    port = int(os.environ["HTTPS_PROXY"].rpartition(":")[2])
    relay = await serve_relay(os.environ["CLAWDEN_GATEWAY_SOCKET"], "127.0.0.1", port)
    try:
        got = await asyncio.to_thread(lambda: [call(u, m) for u, m in json.loads(sys.argv[1])])
    finally:
        relay.close()
    print(json.dumps({"answers": got, "env": dict(os.environ)}))

asyncio.run(main())
"""


async def test_agents_and_rules_are_renamed_changed_and_deleted_at_onecli_paths(vault: Vault) -> None:
    key = await vault.new_key("ops")
    async with vault.client(key) as api:
        await api.post("/v1/agents", json={"name": "Builder", "identifier": "builder"})
        renamed = await api.patch("/v1/agents/builder", json={"name": "Release builder"})
        proxy = (await api.get("/v1/container-config", params={"agent": "builder"})).json()["env"]["HTTPS_PROXY"]
        deleted = await api.delete("/v1/agents/builder")
        gone = await api.get("/v1/container-config", params={"agent": "builder"})
        again = await api.delete("/v1/agents/builder")
        await api.post("/v1/rules", json={"name": "r1", "hostPattern": SITE, "action": "block", "method": "DELETE"})
        got = await api.get("/v1/rules/r1")
        patched = await api.patch(
            "/v1/rules/r1", json={"action": "rate_limit", "rateLimit": 5, "rateLimitWindow": "hour", "method": None}
        )
        disabled = await api.patch("/v1/rules/r1", json={"enabled": False})
        bad = await api.patch("/v1/rules/r1", json={"action": "maybe"})
        unknown = await api.patch("/v1/rules/none", json={"enabled": True})
        removed = await api.delete("/v1/rules/r1")
        rules = await api.get("/v1/rules")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Release builder"
    assert deleted.json() == {"success": True}
    assert gone.status_code == 404 and again.status_code == 404
    # The deleted agent's proxy token is refused from the next connection on.
    async with httpx.AsyncClient(proxy=proxy, verify=False, trust_env=False, timeout=10) as old:
        with pytest.raises(httpx.ProxyError, match="407"):
            await old.get(f"https://{SITE}/user")
    assert (got.json()["action"], got.json()["method"]) == ("block", "DELETE")
    body = patched.json()
    assert (body["action"], body["rateLimit"], body["rateLimitWindow"], body["method"]) == (
        "rate_limit",
        5,
        "hour",
        None,
    )
    assert disabled.json()["enabled"] is False and disabled.json()["rateLimit"] == 5
    assert (
        bad.status_code == 400
        and bad.json()["message"] == "--action must be block, manual_approval, rate_limit or allow"
    )
    assert unknown.status_code == 404
    assert removed.json() == {"success": True} and rules.json() == []


def run_container(client: docker.DockerClient, image: str, config: dict[str, Any], calls: list[tuple[str, str]]) -> str:
    """What an orchestrator does with the config: its env, its mounts, the CA at its path; and no network."""
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as ca:
        ca.write(config["caCertificate"])
    Path(ca.name).chmod(0o644)
    mounts = [Mount(m["target"], m["source"], type="bind", read_only=m["readOnly"]) for m in config["mounts"]]
    mounts.append(Mount(config["caCertificateContainerPath"], ca.name, type="bind", read_only=True))
    container = client.containers.run(
        image,
        ["python", "-c", SCRIPT, json.dumps(calls)],
        detach=True,
        environment=config["env"],
        user=agentcontainer.container_user()[0],
        name=f"clawden-test-api-{secrets.token_hex(3)}",
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        mounts=mounts,
    )
    try:
        code = int(container.wait(timeout=90).get("StatusCode", -1))
        output = bytes(container.logs()).decode("utf-8", "replace")
    finally:
        container.remove(force=True)
        Path(ca.name).unlink()
    assert code == 0, output
    return output


@pytest.mark.docker
async def test_a_onecli_client_starts_a_networkless_container_whose_request_carries_the_secret(
    vault: Vault, docker_client: docker.DockerClient, agent_image: str
) -> None:
    key = await vault.new_key("orchestrator")
    async with vault.client(key) as api:
        await api.post("/v1/agents", json={"name": "Builder", "identifier": "builder"})
        secret = {
            "name": "github",
            "type": "generic",
            "value": VALUE,
            "hostPattern": SITE,
            "injectionConfig": {"headerName": "Authorization", "valueFormat": "Bearer {value}"},
        }
        await api.post("/v1/secrets", json=secret)
        await api.post(
            "/v1/rules", json={"name": "no-deletes", "hostPattern": SITE, "method": "DELETE", "action": "block"}
        )
        config = (await api.get("/v1/container-config", params={"agent": "builder", "transport": "socket"})).json()
        bad = await api.get("/v1/container-config", params={"agent": "builder", "transport": "carrier-pigeon"})
    assert bad.status_code == 400
    assert config["env"]["HTTPS_PROXY"] == "http://127.0.0.1:3128"

    calls = [(f"https://{SITE}/user", "GET"), (f"https://{SITE}/repo", "DELETE")]
    output = await asyncio.to_thread(run_container, docker_client, agent_image, config, calls)
    got = json.loads(output.strip().splitlines()[-1])

    (status, body), (blocked, refusal) = got["answers"]
    assert status == 200 and json.loads(body)["echo"] == "/user"
    assert blocked == 403 and json.loads(refusal)["error"] == "blocked_by_policy"
    assert vault.site.received[-1].header(b"authorization") == f"Bearer {VALUE}".encode()
    assert [r.method for r in vault.site.received] == [b"GET"]
    assert VALUE not in output  # not in the answers, not in the container's environment
