"""The webhook front door alone, as its own process over real NATS: what the platform signed is stored in
JetStream before the 200, once however often it comes; anything else is refused and never stored."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from clawden.bus import webhooks
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.whatsapp import APP_SECRET, VERIFY_TOKEN, MetaRetries, body_of, sign
from tests.webhooks.harness import FrontDoorProcess, make_home

pytestmark = pytest.mark.process

STREAM = "CLAWDEN_WEBHOOKS"


async def door_for(tmp_path: Path, nats_server: NatsServer, settings: str = "") -> FrontDoorProcess:
    port = make_home(tmp_path / "home", settings=settings)
    return await FrontDoorProcess(tmp_path / "home", nats_server.url, port, tmp_path / "webhooks.log").start()


@pytest.fixture
async def door(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[FrontDoorProcess]:
    front = await door_for(tmp_path, nats_server)
    yield front
    front.stop()


async def stored(nc: Client) -> list[webhooks.WebhookDelivery]:
    js = nc.jetstream()
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        return []
    out: list[webhooks.WebhookDelivery] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(STREAM, seq)
        assert msg.data is not None
        out.append(webhooks.decoder.decode(msg.data))
    return out


async def test_a_signed_delivery_is_in_jetstream_when_answered_and_its_retry_is_not_stored_again(
    door: FrontDoorProcess, nc: Client
) -> None:
    sender = door.sender()
    payload = sender.text("447700900123", "hello")
    first = await sender.post(payload)
    assert first.status_code == 200
    got = await stored(nc)  # no wait: the 200 came after JetStream's ack
    assert [json.loads(d.body) for d in got] == [payload]
    assert got[0].channel == "whatsapp"
    again = await sender.post(payload)  # Meta retries what it thinks failed
    assert again.status_code == 200
    assert len(await stored(nc)) == 1


async def test_unsigned_wrongly_signed_and_malformed_deliveries_are_refused_and_never_stored(
    door: FrontDoorProcess, nc: Client
) -> None:
    sender = door.sender()
    payload = sender.text("447700900123", "let me in")
    assert (await sender.post(payload, signature="none")).status_code == 401
    assert (await sender.post(payload, signature="wrong")).status_code == 401
    assert (await sender.post(b"{not json", signature="right")).status_code == 400
    assert (await sender.post(b"[1, 2]", signature="right")).status_code == 400
    async with httpx.AsyncClient() as client:
        assert (await client.put(door.url, content=b"{}")).status_code == 405
        assert (await client.post(door.url.replace("whatsapp", "nobody"), content=b"{}")).status_code == 404
    assert await stored(nc) == []
    log = door.output()
    assert "no X-Hub-Signature-256 header" in log
    assert "does not match the body" in log
    assert "not a JSON object" in log


async def test_the_subscription_handshake_echoes_the_challenge_only_for_the_verify_token(
    door: FrontDoorProcess,
) -> None:
    sender = door.sender()
    right = await sender.handshake(VERIFY_TOKEN, challenge="1158201444")
    assert (right.status_code, right.text) == (200, "1158201444")
    wrong = await sender.handshake("guess", challenge="1158201444")
    assert wrong.status_code == 403
    assert "1158201444" not in wrong.text


def most_unread() -> int:
    """The most a client can send that the server never read: the 1 MiB limit it reads to, what the server's
    receive buffer and the client's send buffer may autotune to (tcp_rmem, tcp_wmem), and 1 MiB for the
    server's own buffers. A client that sent past it was read, whatever the machine's speed."""
    most = [int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2]) for name in ("tcp_rmem", "tcp_wmem")]
    return (1 << 20) + sum(most) + (1 << 20)


async def test_an_oversized_body_is_refused_without_being_read(door: FrontDoorProcess, nc: Client) -> None:
    bound = most_unread()
    for declared in (True, False):  # Content-Length says it up front; chunked is refused at the 1 MiB limit
        status, sent = await door.sender().oversized(2 * bound, declared=declared)
        assert status == 413
        assert sent <= bound
    assert await stored(nc) == []


async def test_a_source_over_its_rate_is_told_when_to_come_back(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    # One token in 1,000 s: however slow the machine, none comes back between the four posts.
    door = await door_for(tmp_path, nats_server, settings="rate = 0.001\nburst = 3")
    try:
        sender = door.sender()
        answers = [await sender.post(sender.text("447700900123", f"n{i}")) for i in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert int(answers[-1].headers["retry-after"]) > 900  # the next token is 1,000 s away
        assert len(await stored(nc)) == 3
    finally:
        door.stop()


async def test_a_client_that_stalls_mid_body_is_cut_off(tmp_path: Path, nats_server: NatsServer) -> None:
    door = await door_for(tmp_path, nats_server, settings="body_timeout = 1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", door.port)
        writer.write(
            b"POST /hooks/whatsapp HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n"
            b"x-hub-signature-256: sha256=" + b"0" * 64 + b'\r\n\r\n{"object"'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 20)
        writer.close()
        assert status_line.split()[1] == b"408"
    finally:
        door.stop()


async def test_with_nats_down_the_platform_is_told_to_retry_and_its_retry_is_stored(
    door: FrontDoorProcess, nats_server: NatsServer
) -> None:
    sender = door.sender()
    payload = sender.text("447700900123", "while NATS restarts")
    nats_server.stop()
    refused = await sender.post(payload)
    assert refused.status_code == 503
    assert "retry-after" in refused.headers
    nats_server.restart()

    async def retried() -> bool:  # Meta retries with backoff; here, until the door is back on NATS
        return (await sender.post(payload)).status_code == 200

    await eventually(retried, timeout=30, message=door.output)
    from clawden.bus import connect

    client = await connect(nats_server.url, "test")
    try:
        assert [json.loads(d.body) for d in await stored(client)] == [payload]
    finally:
        await client.close()


async def test_killed_with_a_hundred_in_flight_the_retries_store_each_delivery_exactly_once(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    door = await door_for(tmp_path, nats_server, settings="rate = 10000.0\nburst = 10000")
    sender = door.sender()
    bodies = [body_of(sender.text("447700900123", f"message {i}")) for i in range(100)]
    release = asyncio.Event()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        meta = MetaRetries(sender, client)
        # Half go straight through; the other half are held mid-body, so they are in flight at the kill.
        flight = [asyncio.create_task(meta.deliver(b, hold=release if i % 2 else None)) for i, b in enumerate(bodies)]
        await eventually(lambda: len(meta.answered) >= 20 and meta.held == 50, timeout=60, message=door.output)
        door.kill()
        release.set()
        assert meta.answered.keys().isdisjoint(bodies[1::2])  # none of the held was answered: all 50 retry
        door = await door.start()
        try:
            await asyncio.gather(*flight)
            for body in bodies[::10]:  # Meta sends the odd notification twice
                await meta.deliver(body)
            assert meta.failed >= 50
            got = await stored(nc)
        finally:
            door.stop()
    assert sorted(d.body for d in got) == sorted(bodies)


async def test_doctor_proves_the_public_url_reaches_the_door_by_its_handshake(door: FrontDoorProcess) -> None:
    from clawden import config, natsserver
    from clawden.cli import doctor

    def with_public(url: str) -> config.Config:
        cfg = config.load(door.home)
        return msgspec.structs.replace(cfg, webhooks=msgspec.structs.replace(cfg.webhooks, public_url=url))

    reaching = await doctor.check_webhooks(doctor.Probe(with_public(f"http://127.0.0.1:{door.port}"), {}))
    assert reaching.status == "ok", reaching
    nowhere = await doctor.check_webhooks(doctor.Probe(with_public(f"http://127.0.0.1:{natsserver.free_port()}"), {}))
    assert nowhere.status == "FAIL"
    assert "did not answer" in nowhere.detail
    cfg = with_public("")
    unknown = msgspec.structs.replace(cfg, webhooks=msgspec.structs.replace(cfg.webhooks, routes={"acme": "smoke"}))
    refused = await doctor.check_webhooks(doctor.Probe(unknown, {}))
    assert refused.status == "FAIL" and "known schemes are meta" in refused.detail and "correct" in refused.fix


async def test_behind_a_proxy_the_rate_is_counted_per_forwarded_source(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    door = await door_for(tmp_path, nats_server, settings="rate = 0.001\nburst = 1\nforwarded_for = true")
    try:
        sender = door.sender()

        async def via_proxy(client_ip: str, text: str) -> int:
            body = json.dumps(sender.text("447700900123", text)).encode()
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    door.url,
                    content=body,
                    headers={
                        "x-hub-signature-256": sign(APP_SECRET, body),
                        "x-forwarded-for": f"198.51.100.7, {client_ip}",
                    },
                )
            return answer.status_code

        assert await via_proxy("203.0.113.1", "one") == 200
        assert await via_proxy("203.0.113.2", "two") == 200  # all come from 127.0.0.1, yet each has its own
        assert await via_proxy("203.0.113.1", "three") == 429
        assert "from 203.0.113.1 refused: over" in door.output()
    finally:
        door.stop()
