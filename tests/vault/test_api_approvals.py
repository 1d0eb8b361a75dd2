"""The approvals long-poll and decision of the vault's HTTP API against real held requests: the whole stack
(`clawden up` with the real router and approvals service, an owner at the terminal), an agent container's
request held by a manual_approval rule, and a OneCLI-shaped client that polls `GET /v1/approvals/pending`
and answers with `POST /v1/approvals/{id}/decision`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from clawden import config as config_mod
from clawden import control, natsserver
from clawden.bus.ctl import vault as vault_ctl
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.eventually import eventually

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
API_PORT = natsserver.free_port()

FETCH = """
import json, sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": "http://127.0.0.1:3128"}))
try:
    with opener.open(urllib.request.Request(sys.argv[1], method="POST", data=b"{}"), timeout=90) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    s = start_stack(
        tmp_path_factory.mktemp("home"), vault=f'approval_timeout = 60\napi_listen = "127.0.0.1:{API_PORT}"'
    )
    yield s
    s.stop()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A OneCLI client with a fresh key, once the owner has talked to the assistant (so a container runs)."""
    async with Terminal(stack, "terminal") as term:
        await stack.wait_until_idle((await term.ask("hello", timeout=90)).session_id)
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "clawden", "api-keys", "create", "approver-bot"],
        env=stack.env(),
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    await control.ask(
        config_mod.load(stack.home),
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(name="ask-pay", action="manual_approval", host="api.anthropic.com", path="/v1/pay/*"),
    )
    key = made.stdout.strip().splitlines()[-1]
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{API_PORT}", headers={"Authorization": f"Bearer {key}"}, timeout=90, trust_env=False
    ) as client:
        yield client


def fetch_from_container(stack: Stack, url: str) -> tuple[int, str]:
    [box] = stack.containers()
    result = box.exec_run(["python", "-c", FETCH, url], user="1000")
    status, body = json.loads(result.output.decode().strip().splitlines()[-1])
    return int(status), str(body)


async def decide(api: httpx.AsyncClient, id: str, decision: str) -> httpx.Response:
    """The decision, once the approvals service has recorded the ask (503 approval_not_recorded until then)."""

    async def recorded() -> httpx.Response | None:
        answer = await api.post(f"/v1/approvals/{id}/decision", json={"decision": decision})
        return None if answer.status_code == 503 else answer

    return await eventually(recorded, timeout=30)


async def test_a_long_poll_wakes_for_a_held_request_and_its_decision_releases_or_fails_it(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    outcomes = []
    for decision, path in (("approve", "/v1/pay/a"), ("deny", "/v1/pay/b")):
        # The poll is waiting before the request exists: it wakes on the gateway holding it.
        poll = asyncio.create_task(api.get("/v1/approvals/pending", params={"timeout": "60"}))
        call = asyncio.create_task(asyncio.to_thread(fetch_from_container, stack, f"https://api.anthropic.com{path}"))
        polled = await poll
        [held] = polled.json()["requests"]
        assert (held["method"], held["host"], held["path"]) == ("POST", "api.anthropic.com", path)
        assert held["url"] == f"https://api.anthropic.com{path}" and not call.done()
        decided = await decide(api, held["id"], decision)
        assert decided.json() == {"success": True}
        outcomes.append(await asyncio.wait_for(call, 60))
        again = await api.post(f"/v1/approvals/{held['id']}/decision", json={"decision": decision})
        assert again.status_code == 410 and again.json()["error"] == "approval_expired"

    (approved, _), (denied, body) = outcomes
    assert approved == 404  # it reached the fake site, which has no such path
    assert any(r.path == "/v1/pay/a" for r in stack.fake.requests)
    assert denied == 403 and json.loads(body)["error"] == "manual_approval_denied"
    assert not any(r.path == "/v1/pay/b" for r in stack.fake.requests)
    left = await api.get("/v1/approvals/pending", params={"timeout": "0"})
    assert left.json()["requests"] == []
