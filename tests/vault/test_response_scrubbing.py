"""Whatever the gateway injected into a request (a query parameter, a header, the path) never comes back
to the agent: not in a redirect that keeps the query, not in a body echoing the request, not inside a
compressed body the scrubber could not read."""

from __future__ import annotations

import asyncio
import gzip
import json

import h11
import pytest

from tests.vault.conftest import RigFactory, secret
from tests.vault.sites import WEBSOCKET_ASK, FakeUpstream, Received, Reply, close_writer, open_tunnel

pytestmark = pytest.mark.timeout(15)

KEY = "real-key-4f9a7c1e+b/2"


async def echo_request(request: Received, reply: Reply) -> None:
    """A site that quotes the request back: a redirect keeping the query, else its target and headers
    in the body, gzipped when the request accepts gzip (as most servers do)."""
    target = request.target.decode()
    if target.startswith("/v1/items?"):
        location = b"/v1/items/?" + request.target.partition(b"?")[2]
        await reply.send(h11.Response(status_code=301, headers=[(b"location", location), (b"content-length", b"0")]))
        await reply.send(h11.EndOfMessage())
        return
    body = json.dumps({"target": target, "headers": {k.decode(): v.decode() for k, v in request.headers}}).encode()
    headers = [(b"content-type", b"application/json")]
    if b"gzip" in (request.header(b"accept-encoding") or b""):
        body = gzip.compress(body)
        headers.append((b"content-encoding", b"gzip"))
    await reply.send(h11.Response(status_code=400, headers=[*headers, (b"content-length", str(len(body)).encode())]))
    await reply.send(h11.Data(data=body))
    await reply.send(h11.EndOfMessage())


def seen(response: object) -> str:
    return f"{getattr(response, 'headers', '')} {getattr(response, 'content', b'')!r}"


async def test_a_query_secret_does_not_come_back_in_a_redirect(rig: RigFactory, site: FakeUpstream) -> None:
    site.respond = echo_request
    param = secret("q", "generic", "api.example.test", KEY, param_name="api_key")
    async with rig((param,)) as r, r.client() as http:
        moved = await http.get("https://api.example.test/v1/items?api_key=PH&page=2")

    assert site.received[0].target == b"/v1/items?page=2&api_key=real-key-4f9a7c1e%2Bb%2F2"
    assert moved.status_code == 301
    assert moved.headers["location"] == "/v1/items/?page=2&api_key=clawden-managed"


async def test_a_header_secret_echoed_in_a_body_is_scrubbed(rig: RigFactory, site: FakeUpstream) -> None:
    site.respond = echo_request
    header = secret("h", "generic", "api.example.test", KEY, header_name="X-Api-Key", value_format="Key {value}")
    async with rig((header,)) as r, r.client() as http:
        echoed = await http.get("https://api.example.test/v1/echo", headers={"accept-encoding": "identity"})

    assert site.received[0].header(b"x-api-key") == f"Key {KEY}".encode()
    assert echoed.json()["headers"]["x-api-key"] == "Key clawden-managed"
    assert KEY not in seen(echoed)


async def test_a_secret_in_a_gzipped_answer_never_reaches_the_agent(rig: RigFactory, site: FakeUpstream) -> None:
    site.respond = echo_request
    header = secret("h", "generic", "api.example.test", KEY, header_name="X-Api-Key")
    async with rig((header,)) as r, r.client() as http:
        echoed = await http.get("https://api.example.test/v1/echo", headers={"accept-encoding": "gzip, br"})

    assert site.received[0].header(b"accept-encoding") == b"identity"
    assert echoed.json()["headers"]["x-api-key"] == "clawden-managed"
    assert KEY not in echoed.text


async def test_a_site_that_compresses_anyway_is_refused_where_a_secret_went(
    rig: RigFactory, site: FakeUpstream
) -> None:
    async def always_gzip(request: Received, reply: Reply) -> None:
        body = gzip.compress(json.dumps({"key": request.header(b"x-api-key").decode()}).encode())  # type: ignore[union-attr]
        headers = [(b"content-encoding", b"gzip"), (b"content-length", str(len(body)).encode())]
        await reply.send(h11.Response(status_code=200, headers=headers))
        await reply.send(h11.Data(data=body))
        await reply.send(h11.EndOfMessage())

    site.respond = always_gzip
    header = secret("h", "generic", "api.example.test", KEY, header_name="X-Api-Key")
    async with rig((header,)) as r, r.client() as http:
        answer = await http.get("https://api.example.test/v1/echo")

    assert answer.status_code == 502
    assert KEY not in answer.text


async def test_a_secret_echoed_in_a_websocket_switch_is_scrubbed(rig: RigFactory, site: FakeUpstream) -> None:
    async def switch_echoing(request: Received, reply: Reply) -> None:
        """A site whose 101 quotes the key it was sent, in a header and in its reason phrase."""
        key = request.header(b"x-api-key") or b""
        switch = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"x-echo", b"Key " + key)]
        await reply.send(h11.InformationalResponse(status_code=101, headers=switch, reason=b"Switching " + key))

    site.respond = switch_echoing
    header = secret("h", "generic", "api.example.test", KEY, header_name="X-Api-Key")
    async with rig((header,)) as r:
        reader, writer = await open_tunnel(r.socket, "api.example.test", r.gateway.ca.cert_pem)
        try:
            writer.write(WEBSOCKET_ASK)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        finally:
            await close_writer(writer)

    assert site.received[0].header(b"x-api-key") == KEY.encode()
    assert head.startswith(b"HTTP/1.1 101 Switching clawden-managed\r\n")
    assert b"x-echo: Key clawden-managed\r\n" in head
    assert KEY.encode() not in head


async def test_a_secret_echoed_in_a_reason_phrase_is_scrubbed(rig: RigFactory, site: FakeUpstream) -> None:
    async def reason_echoing(request: Received, reply: Reply) -> None:
        key = request.header(b"x-api-key") or b""
        await reply.send(h11.Response(status_code=403, headers=[(b"content-length", b"0")], reason=b"Bad key " + key))
        await reply.send(h11.EndOfMessage())

    site.respond = reason_echoing
    header = secret("h", "generic", "api.example.test", KEY, header_name="X-Api-Key")
    async with rig((header,)) as r, r.client() as http:
        refused = await http.get("https://api.example.test/v1/echo")

    assert refused.status_code == 403
    assert refused.reason_phrase == "Bad key clawden-managed"
