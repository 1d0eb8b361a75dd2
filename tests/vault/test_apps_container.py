"""An app connection from inside a real agent container (`--network none`, read-only, no capabilities): the
image's own relay to the gateway socket, the container's trust variables, and a script doing what Google's
client libraries do with stub credentials (refresh at oauth2.googleapis.com/token, then call Gmail with the
token it got). The provider has already expired the connection's first token, so the call is signed with a
refreshed one; everything the container printed (its environment too) holds neither token."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.types import Mount

from clawden import agentcontainer
from clawden.vaultfiles import SOCKET_NAME
from services.vault.certs import write_trust_files
from tests.vault.conftest import GROUP
from tests.vault.test_apps_gateway import AppRig, apps

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]
__all__ = ["apps"]  # the fixture, used here

SCRIPT = r"""
import asyncio, json, os, sys, urllib.error, urllib.parse, urllib.request
from clawden_agent.relay import serve_relay

def call(opener, request):
    try:
        with opener.open(request, timeout=30) as r:
            return {"status": r.status, "headers": dict(r.headers), "body": r.read().decode()}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "headers": dict(e.headers), "body": e.read().decode()}

def calls(port):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": "http://127.0.0.1:%d" % port}))
    stub = {"grant_type": "refresh_token", "refresh_token": "stub", "client_id": "stub", "client_secret": "stub"}
    token = call(opener, urllib.request.Request(
        "https://oauth2.googleapis.com/token", data=urllib.parse.urlencode(stub).encode(), method="POST"))
    bearer = json.loads(token["body"]).get("access_token", "")
    gmail = call(opener, urllib.request.Request(
        "https://gmail.googleapis.com/gmail/v1/users/me/messages", headers={"Authorization": "Bearer " + bearer}))
    return {"token": token, "gmail": gmail, "env": dict(os.environ)}

async def main():
    relay = await serve_relay(sys.argv[1], "127.0.0.1", 0)
    try:
        print(json.dumps(await asyncio.to_thread(calls, relay.sockets[0].getsockname()[1])))
    finally:
        relay.close()

asyncio.run(main())
"""


def run_agent_script(client: docker.DockerClient, image: str, gateway_dir: Path, trust: Path) -> str:
    gateway_dir.parent.chmod(0o755)  # the container's user reaches the socket through it
    user = agentcontainer.container_user()[0]
    container = client.containers.run(
        image,
        ["python", "-c", SCRIPT, f"{agentcontainer.GATEWAY_MOUNT}/{SOCKET_NAME}"],
        detach=True,
        environment=agentcontainer.environment(trust=True),
        user=user,
        name=f"clawden-test-apps-{secrets.token_hex(3)}",
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": "rw,size=16m,mode=1777"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        mounts=[
            Mount(agentcontainer.GATEWAY_MOUNT, str(gateway_dir), type="bind", read_only=True),
            Mount(agentcontainer.TRUST_MOUNT, str(trust), type="bind", read_only=True),
        ],
    )
    try:
        code = int(container.wait(timeout=90).get("StatusCode", -1))
        output = bytes(container.logs()).decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    assert code == 0, output
    return output


async def test_a_gmail_call_from_a_real_container_is_signed_with_a_refreshed_token(
    apps: AppRig, docker_client: docker.DockerClient, agent_image: str, sock_dir: Path
) -> None:
    await apps.connect("google")
    apps.fake.expire_access_tokens()
    trust = sock_dir / "trust"
    write_trust_files(apps.gateway.ca, trust)

    output = await asyncio.to_thread(run_agent_script, docker_client, agent_image, sock_dir / GROUP, trust)
    apps.seen.append(output)
    got: dict[str, Any] = json.loads(output.strip().splitlines()[-1])

    assert got["token"]["status"] == 200
    assert json.loads(got["token"]["body"])["access_token"] == "clawden-managed"
    assert got["gmail"]["status"] == 200, got["gmail"]
    assert json.loads(got["gmail"]["body"])["resultSizeEstimate"] == 1
    gmail = "gmail.googleapis.com/gmail/v1/users/me/messages"
    assert apps.fake.api_calls == [(gmail, 401), (gmail, 200)]
    assert apps.fake.grants == ["authorization_code", "refresh_token"]
    assert apps.leaked() == []
