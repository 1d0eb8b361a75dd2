"""The fake Slack refuses what Slack refuses: an envelope acknowledged late comes again, a token of the wrong
type, a JSON body where Slack reads form fields, blocks Block Kit rejects; faults are answered as Slack's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.eventually import eventually
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, Error, FakeSlack


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(ack_window=0.5).start()
    yield fake
    await fake.stop()


async def call(
    session: aiohttp.ClientSession,
    slack: FakeSlack,
    method: str,
    token: str,
    *,
    json_body: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with session.post(
        slack.url + method, json=json_body, data=form, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def test_an_envelope_acknowledged_late_is_delivered_again_with_its_retry_attempt(slack: FakeSlack) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    async with aiohttp.ClientSession() as session:
        _, opened = await call(session, slack, "apps.connections.open", APP_TOKEN)
        async with session.ws_connect(opened["url"]) as ws:
            assert json.loads((await ws.receive()).data)["type"] == "hello"
            slack.say(dm, ada, "hello")
            first = json.loads((await ws.receive()).data)
            again = json.loads((await ws.receive(timeout=5)).data)  # not acknowledged within the window
            assert (first["retry_attempt"], again["retry_attempt"], again["retry_reason"]) == (0, 1, "timeout")
            assert again["payload"]["event_id"] == first["payload"]["event_id"]
            await ws.send_str(json.dumps({"envelope_id": first["envelope_id"]}))  # too late: not counted
            await ws.send_str(json.dumps({"envelope_id": again["envelope_id"]}))
            await eventually(lambda: slack.unacked == 0, 5, "the in-time ack was not taken")
        # A socket URL is good for one connection.
        async with session.get(opened["url"].replace("ws", "http", 1)) as resp:
            assert resp.status == 401


async def test_the_web_api_refuses_as_slack_does(slack: FakeSlack) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    async with aiohttp.ClientSession() as session:
        assert (await call(session, slack, "apps.connections.open", BOT_TOKEN))[1]["error"] == "not_allowed_token_type"
        assert (await call(session, slack, "auth.test", "xoxb-wrong"))[1]["error"] == "invalid_auth"
        upload = await call(
            session, slack, "files.getUploadURLExternal", BOT_TOKEN, json_body={"filename": "a.txt", "length": 3}
        )
        assert upload[1]["error"] == "invalid_form_data"
        button = {"type": "button", "action_id": "a", "value": "v", "text": {"type": "plain_text", "text": "x" * 76}}
        blocks = [{"type": "actions", "elements": [button]}]
        posted = await call(
            session, slack, "chat.postMessage", BOT_TOKEN, json_body={"channel": dm, "text": "t", "blocks": blocks}
        )
        assert posted[1]["error"] == "invalid_blocks"
        assert (await call(session, slack, "chat.postMessage", BOT_TOKEN, json_body={"channel": "C404", "text": "t"}))[
            1
        ]["error"] == "channel_not_found"
        slack.inject("chat.postMessage", Error(429, "ratelimited", retry_after=7), Error(503))
        async with session.post(
            slack.url + "chat.postMessage",
            json={"channel": dm, "text": "t"},
            headers={"Authorization": f"Bearer {BOT_TOKEN}"},
        ) as resp:
            assert (resp.status, resp.headers["Retry-After"], (await resp.json())["error"]) == (429, "7", "ratelimited")
        assert (await call(session, slack, "chat.postMessage", BOT_TOKEN, json_body={"channel": dm, "text": "t"}))[
            0
        ] == 503
    assert slack.texts(dm) == []
