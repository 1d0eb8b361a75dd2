"""The fake Discord refuses what Discord refuses (each rule's page is named in tests/fakes/discord.py), so a
bridge test that passes against it is not passing against something laxer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord import BOT_ID, MESSAGE_CONTENT, TOKEN, FakeDiscord

AUTH = {"Authorization": f"Bot {TOKEN}"}


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord(bucket=(3, 60.0)).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, fake: FakeDiscord, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, fake.url + path, headers=kw.pop("headers", AUTH), **kw) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def test_rest_refusals_carry_discords_status_and_code(discord: FakeDiscord, http: aiohttp.ClientSession) -> None:
    ada = discord.user("ada")
    general = discord.channel("general")
    said = discord.say(general, ada, "hi")
    assert (await call(http, discord, "GET", "/users/@me", headers={}))[0] == 401
    assert (await call(http, discord, "POST", "/channels/1/messages", json={"content": "x"}))[1]["code"] == 10003
    status, body = await call(http, discord, "POST", f"/channels/{general}/messages", json={"content": "x" * 2001})
    assert (status, body["code"]) == (400, 50035)
    status, body = await call(http, discord, "PATCH", f"/channels/{general}/messages/{said}", json={"content": "y"})
    assert (status, body["code"]) == (403, 50005)
    status, body = await call(http, discord, "POST", f"/channels/{general}/messages", json={"content": ""})
    assert (status, body["code"]) == (400, 50006)


async def test_a_spent_bucket_answers_429_with_retry_after_and_the_headers(
    discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    general = discord.channel("general")
    for i in range(3):
        async with http.post(
            f"{discord.url}/channels/{general}/messages", headers=AUTH, json={"content": f"m{i}"}
        ) as resp:
            assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == str(2 - i)
    async with http.post(f"{discord.url}/channels/{general}/messages", headers=AUTH, json={"content": "m3"}) as resp:
        body = await resp.json()
        assert resp.status == 429 and body["retry_after"] > 0 and body["global"] is False
        assert resp.headers["X-RateLimit-Scope"] == "user" and int(resp.headers["Retry-After"]) >= 1


async def test_a_repeated_nonce_returns_the_first_message(discord: FakeDiscord, http: aiohttp.ClientSession) -> None:
    general = discord.channel("general")
    body = {"content": "once", "nonce": "abc", "enforce_nonce": True}
    first = (await call(http, discord, "POST", f"/channels/{general}/messages", json=body))[1]
    again = (await call(http, discord, "POST", f"/channels/{general}/messages", json=body))[1]
    assert first["id"] == again["id"] and discord.texts(general) == ["once"]


async def test_the_gateway_wants_identify_first_and_the_right_token(
    discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(discord.gateway_url + "/?v=10&encoding=json") as ws:
        assert (await ws.receive_json())["op"] == 10
        await ws.send_json({"op": 0, "d": {}})
        await ws.receive()
        assert ws.close_code == 4003
    async with http.ws_connect(discord.gateway_url + "/?v=10&encoding=json") as ws:
        await ws.receive_json()
        await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0, "properties": {}}})
        await ws.receive()
        assert ws.close_code == 4004


async def test_without_the_message_content_intent_a_guild_message_arrives_empty_unless_it_mentions_the_bot(
    discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    ada = discord.user("ada")
    general = discord.channel("general")
    async with http.ws_connect(discord.gateway_url + "/?v=10&encoding=json") as ws:
        await ws.receive_json()
        await ws.send_json(
            {"op": 2, "d": {"token": TOKEN, "intents": (1 << 9) & ~MESSAGE_CONTENT, "properties": {"os": "linux"}}}
        )
        assert (await ws.receive_json())["t"] == "READY"
        assert (await ws.receive_json())["t"] == "GUILD_CREATE"
        discord.say(general, ada, "plain")
        discord.say(general, ada, f"<@{BOT_ID}> named")
        plain, named = (await ws.receive_json())["d"], (await ws.receive_json())["d"]
        assert (plain["content"], named["content"]) == ("", f"<@{BOT_ID}> named")


async def test_an_interaction_is_acknowledged_once(discord: FakeDiscord, http: aiohttp.ClientSession) -> None:
    ada = discord.user("ada")
    dm = discord.dm(ada)
    card = {
        "content": "go?",
        "components": [{"type": 1, "components": [{"type": 2, "style": 1, "label": "Yes", "custom_id": "t:0"}]}],
    }
    posted = (await call(http, discord, "POST", f"/channels/{dm}/messages", json=card))[1]
    async with http.ws_connect(discord.gateway_url + "/?v=10&encoding=json") as ws:
        await ws.receive_json()
        await ws.send_json({"op": 2, "d": {"token": TOKEN, "intents": 0, "properties": {}}})
        await ws.receive_json()
        await ws.receive_json()
        discord.click(dm, posted["id"], ada)
        pressed = (await ws.receive_json())["d"]
    path = f"/interactions/{pressed['id']}/{pressed['token']}/callback"
    assert (await call(http, discord, "POST", path, json={"type": 6}, headers={}))[0] == 204
    status, body = await call(http, discord, "POST", path, json={"type": 6}, headers={})
    assert (status, body["code"]) == (400, 40060)
    assert (await call(http, discord, "POST", path.replace(pressed["token"], "forged"), json={"type": 6}, headers={}))[
        1
    ]["code"] == 10062
