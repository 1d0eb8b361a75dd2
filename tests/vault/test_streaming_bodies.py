"""A request body no rule's condition looks at is streamed to the site, not buffered; one a condition
looks at is read first only up to the condition limit, and the rest streamed.

The proof is a signal, not a clock: the agent sends part of a big upload, then holds the rest back
until the site says it has received body bytes. A gateway that buffered the whole body would never
pass anything on, and the test would fail on the wait's bound instead of passing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import pytest

from services.vault import gateway
from services.vault.catalog import Condition
from services.vault.policy import CONDITION_BODY_LIMIT
from tests.fakes.anthropic import FakeTLS
from tests.vault.conftest import RigFactory, rule
from tests.vault.sites import FakeUpstream, Received, Reply

CHUNK = 16 * 1024


def payload(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


BOSS = (Condition(operator="equals", value="boss@example.com", pointer="/to"),)
# A rule that reads bodies, on POST /send of api.example.test only; big bodies it lets through.
SEND_RULE = rule("no-boss", "block", "api.example.test", method="POST", path_pattern="/send", conditions=BOSS)
SEND_RULE_BIG_OK = rule(
    "no-boss", "block", "api.example.test", method="POST", path_pattern="/send", conditions=BOSS, large_body="ignore"
)


@dataclass
class Upload:
    """The agent's side: a body sent CHUNK by CHUNK, held back at ``hold_at`` until the site has seen body bytes."""

    data: bytes
    hold_at: int
    sent: int = 0
    held: bool = False

    async def body(self, site: StreamingSite) -> AsyncIterator[bytes]:
        while self.sent < len(self.data):
            if self.sent >= self.hold_at and not site.first_body.is_set():
                self.held = True  # the rest waits for the site: only a streaming gateway lets it go on
                await asyncio.wait_for(site.first_body.wait(), 20)
            part = self.data[self.sent : self.sent + CHUNK]
            self.sent += len(part)
            yield part


@dataclass
class StreamingSite:
    """A TLS site that notes, as they happen, the request head and the first body bytes it receives,
    with how much the agent had sent by then; it answers once the whole body is in."""

    upload: Upload | None = None
    first_body: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at_head: int = -1
    sent_at_first_body: int = -1
    held_at_first_body: bool = False
    received: bytes = b""
    _server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self, tls: ssl.SSLContext) -> StreamingSite:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (event := await _next_event(conn, reader)) is not None and not isinstance(event, h11.EndOfMessage):
                self._note(event)
            writer.write(conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")])) or b"")
            writer.write((conn.send(h11.Data(data=b"ok")) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await writer.wait_closed()

    def _note(self, event: h11.Event) -> None:
        assert self.upload is not None
        if isinstance(event, h11.Request):
            self.sent_at_head = self.upload.sent
        elif isinstance(event, h11.Data):
            if not self.first_body.is_set():
                self.sent_at_first_body, self.held_at_first_body = self.upload.sent, self.upload.held
                self.first_body.set()
            self.received += bytes(event.data)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | None:
    while (event := conn.next_event()) is h11.NEED_DATA:
        data = await reader.read(65536)
        if not data:
            return None
        conn.receive_data(data)
    assert isinstance(event, h11.Event) and not isinstance(event, h11.ConnectionClosed), event
    return event


@pytest.fixture
async def streaming_site(site_tls: FakeTLS) -> AsyncIterator[StreamingSite]:
    site = await StreamingSite().start(site_tls.server_context)
    yield site
    await site.close()


async def _upload(rig: RigFactory, site: StreamingSite, url: str, upload: Upload, rules: tuple) -> int:  # type: ignore[type-arg]
    site.upload = upload
    async with rig(rules=rules, site_address=site.address) as r, r.client(timeout=30) as http:
        response = await http.post(url, content=upload.body(site))
    return response.status_code


@pytest.mark.parametrize(
    "url",
    ["https://api.example.test/upload", "https://other.example.test/send"],
    ids=["another-path", "another-host"],
)
async def test_a_body_no_condition_looks_at_reaches_the_site_before_the_agent_has_sent_it_all(
    rig: RigFactory, streaming_site: StreamingSite, url: str
) -> None:
    upload = Upload(payload(2 * CONDITION_BODY_LIMIT), hold_at=4 * CHUNK)

    status = await _upload(rig, streaming_site, url, upload, (SEND_RULE,))

    assert status == 200
    # The site had the head and body bytes while the agent was holding back everything past 64 KiB:
    assert streaming_site.held_at_first_body and streaming_site.sent_at_first_body == upload.hold_at
    assert 0 <= streaming_site.sent_at_head <= upload.hold_at  # nothing waited for the condition limit
    assert streaming_site.received == upload.data  # and the whole body arrived, unchanged


async def test_a_body_a_condition_looks_at_is_read_only_up_to_the_limit_then_streamed(
    rig: RigFactory, streaming_site: StreamingSite
) -> None:
    # Held back just past the limit: the gateway has what it reads for the condition, not the rest.
    hold_at = (CONDITION_BODY_LIMIT // CHUNK + 2) * CHUNK
    upload = Upload(payload(hold_at + CONDITION_BODY_LIMIT), hold_at=hold_at)

    status = await _upload(rig, streaming_site, "https://api.example.test/send", upload, (SEND_RULE_BIG_OK,))

    assert status == 200
    assert streaming_site.held_at_first_body and streaming_site.sent_at_first_body == hold_at
    # The head reached the site only after more than the limit was sent: the gateway read that much first.
    assert CONDITION_BODY_LIMIT < streaming_site.sent_at_head <= hold_at
    assert streaming_site.received == upload.data


async def test_the_condition_on_that_path_does_read_a_small_body(
    rig: RigFactory, streaming_site: StreamingSite
) -> None:
    # The control for the two above: the rule they avoid or let through is live, and judges bodies.
    to_boss = Upload(b'{"to":"boss@example.com"}', hold_at=CONDITION_BODY_LIMIT)

    status = await _upload(rig, streaming_site, "https://api.example.test/send", to_boss, (SEND_RULE_BIG_OK,))

    assert status == 403 and streaming_site.sent_at_head == -1  # blocked: the site never heard of it


# ---- the response's head goes out at once unless its body is already here ----


@pytest.mark.parametrize("first_part", [b"", b"hello"], ids=["no-body-yet", "part-of-the-body"])
async def test_a_response_head_reaches_the_agent_before_a_body_the_site_has_not_sent(
    rig: RigFactory, site: FakeUpstream, first_part: bytes
) -> None:
    # The gateway writes a head together with a body it already has; one still to come must not
    # hold the head back. The site sends the rest only once the agent has read the head.
    agent_has_head = asyncio.Event()
    rest = b" world, after the head"

    async def respond(request: Received, reply: Reply) -> None:
        length = str(len(first_part) + len(rest)).encode()
        await reply.send(h11.Response(status_code=200, headers=[(b"content-length", length)]))
        if first_part:
            await reply.send(h11.Data(data=first_part))
        await asyncio.wait_for(agent_has_head.wait(), 20)
        await reply.send(h11.Data(data=rest))
        await reply.send(h11.EndOfMessage())

    site.respond = respond
    async with rig() as r, r.client() as http, http.stream("GET", "https://api.example.test/slow") as response:
        agent_has_head.set()
        body = await response.aread()

    assert response.status_code == 200 and body == first_part + rest
    assert r.audit[0].decision == "allowed" and r.audit[0].bytes_out == len(body)


async def test_a_response_already_here_arrives_whole_in_one_answer(rig: RigFactory, site: FakeUpstream) -> None:
    # The coalesced path: head and body in the site's one write, and another request after it on the
    # same tunnel (the pooled upstream connection was read to its end).
    async with rig() as r, r.client() as http:
        answers = [await http.get(f"https://api.example.test/n{i}") for i in range(3)]

    assert [a.json()["echo"] for a in answers] == ["/n0", "/n1", "/n2"]
    assert site.connections == 1 and [a.bytes_out for a in r.audit] == [len(a.content) for a in answers]


async def test_a_streamed_upload_is_not_kept_in_memory(
    rig: RigFactory, site: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 parts of 256 KiB streamed through: the gateway holds no more than a few parts at a time."""
    held: list[int] = [0]
    take = gateway._Body._take

    def measured(body: gateway._Body) -> bool:
        taken = take(body)
        held[0] = max(held[0], sum(len(c) for c in body.chunks))
        return taken

    monkeypatch.setattr(gateway._Body, "_take", measured)

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield bytes(256 * 1024)

    async with rig(rules=(SEND_RULE,)) as r, r.client(timeout=60) as http:
        answer = await http.post("https://api.example.test/upload", content=parts())

    assert answer.status_code == 200
    assert len(site.received[0].body) == 200 * 256 * 1024
    assert held[0] < 8 << 20
