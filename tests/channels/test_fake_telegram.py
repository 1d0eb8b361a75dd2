"""The fake Bot API answers like Telegram does, so the bridge is tested against the real wire format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.eventually import eventually
from tests.fakes.telegram import NOT_MODIFIED, BadGateway, Clock, Drop, Error, FakeTelegram, image_size, png


@pytest.fixture
async def api(fake: FakeTelegram) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{fake.url}/bot{fake.token}/", timeout=10) as client:
        yield client


async def call(api: httpx.AsyncClient, method: str, **params: Any) -> tuple[int, dict[str, Any]]:
    response = await api.post(method, json=params)
    return response.status_code, response.json()


async def test_a_wrong_token_gets_401_and_an_unknown_method_404(fake: FakeTelegram) -> None:
    async with httpx.AsyncClient() as client:
        wrong = await client.get(f"{fake.url}/bot123:nope/getMe")
        unknown = await client.get(f"{fake.url}/bot{fake.token}/fly")
    assert (wrong.status_code, wrong.json()) == (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    assert (unknown.status_code, unknown.json()) == (404, {"ok": False, "error_code": 404, "description": "Not Found"})


async def test_get_me_names_the_bot_of_the_token(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    status, body = await call(api, "getMe")
    assert status == 200 and body["result"]["id"] == int(fake.token.split(":")[0])
    assert body["result"]["is_bot"] is True


async def test_a_long_poll_returns_as_soon_as_someone_writes_and_an_offset_confirms(
    fake: FakeTelegram, api: httpx.AsyncClient
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    poll = asyncio.create_task(call(api, "getUpdates", timeout=10))
    await eventually(lambda: fake.polling)
    fake.send(chat, ada, "hi @clawden_test_bot")
    _, body = await asyncio.wait_for(poll, 5)
    [update] = body["result"]
    assert update["message"]["text"] == "hi @clawden_test_bot"
    assert update["message"]["entities"] == [{"type": "mention", "offset": 3, "length": 17}]
    _, again = await call(api, "getUpdates")
    assert again["result"] == [update]  # not confirmed yet
    _, after = await call(api, "getUpdates", offset=update["update_id"] + 1)
    assert after["result"] == [] and fake.pending_updates == 0


async def test_a_second_poll_ends_the_first_with_409(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    first = asyncio.create_task(call(api, "getUpdates", timeout=10))
    await eventually(lambda: fake.polling)
    second = asyncio.create_task(call(api, "getUpdates", timeout=1))
    status, body = await asyncio.wait_for(first, 5)
    assert status == 409 and body["description"].startswith("Conflict: terminated by other getUpdates request")
    assert (await asyncio.wait_for(second, 5))[0] == 200


async def test_polling_while_a_webhook_is_set_is_a_conflict(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    fake.set_webhook("https://example.org/hook")
    status, body = await call(api, "getUpdates")
    assert status == 409 and "webhook is active" in body["description"]


async def test_send_errors_carry_telegrams_codes_and_descriptions(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    assert (await call(api, "sendMessage", chat_id=1, text="x"))[1]["description"] == "Bad Request: chat not found"
    assert (await call(api, "sendMessage", chat_id=chat["id"], text="x" * 4097))[1][
        "description"
    ] == "Bad Request: message is too long"
    keyboard = {"inline_keyboard": [[{"text": "y", "callback_data": "x" * 65}]]}
    assert (await call(api, "sendMessage", chat_id=chat["id"], text="x", reply_markup=keyboard))[1][
        "description"
    ] == "Bad Request: BUTTON_DATA_INVALID"
    fake.block(chat)
    assert await call(api, "sendMessage", chat_id=chat["id"], text="x") == (
        403,
        {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
    )


async def test_injected_faults_look_like_telegrams(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    fake.inject("sendMessage", Error(429, retry_after=3), BadGateway(), Drop(after_processing=True))
    assert await call(api, "sendMessage", chat_id=chat["id"], text="a") == (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3},
        },
    )
    gateway = await api.post("sendMessage", json={"chat_id": chat["id"], "text": "b"})
    assert gateway.status_code == 502 and gateway.headers["content-type"] == "text/html"
    with pytest.raises(httpx.RemoteProtocolError):
        await api.post("sendMessage", json={"chat_id": chat["id"], "text": "c"})
    assert fake.texts(chat) == ["c"]  # only the dropped one took effect


async def test_form_encoded_parameters_work_like_json(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    keyboard = '{"inline_keyboard":[[{"text":"A","callback_data":"a"}]]}'
    form = {"chat_id": str(chat["id"]), "text": "form", "reply_markup": keyboard}
    response = await api.post("sendMessage", data=form)
    assert response.json()["result"]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "a"


async def test_an_edit_to_the_same_content_is_not_modified(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    _, sent = await call(api, "sendMessage", chat_id=chat["id"], text="v1")
    message_id = sent["result"]["message_id"]
    assert (await call(api, "editMessageText", chat_id=chat["id"], message_id=message_id, text="v2"))[0] == 200
    assert (await call(api, "editMessageText", chat_id=chat["id"], message_id=message_id, text="v2"))[1][
        "description"
    ] == NOT_MODIFIED
    assert fake.texts(chat) == ["v2"]


async def test_a_click_arrives_as_a_callback_query_that_can_be_answered_once(
    fake: FakeTelegram, api: httpx.AsyncClient
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    keyboard = {"inline_keyboard": [[{"text": "Yes", "callback_data": "c:0"}, {"text": "No", "callback_data": "c:1"}]]}
    _, sent = await call(api, "sendMessage", chat_id=chat["id"], text="ok?", reply_markup=keyboard)
    query_id = fake.click(chat, sent["result"]["message_id"], ada, button="No")
    _, updates = await call(api, "getUpdates")
    assert updates["result"][0]["callback_query"]["data"] == "c:1"
    assert (await call(api, "answerCallbackQuery", callback_query_id=query_id))[0] == 200
    assert (await call(api, "answerCallbackQuery", callback_query_id=query_id))[0] == 400


async def updates(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    _, body = await call(api, "getUpdates", timeout=0)
    return [u["message"] for u in body["result"]]


async def test_in_privacy_mode_a_group_bot_gets_commands_and_replies_to_it_but_never_a_mention(
    fake: FakeTelegram, api: httpx.AsyncClient
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family")
    _, me = await call(api, "getMe")
    assert me["result"]["can_read_all_group_messages"] is False
    _, sent = await call(api, "sendMessage", chat_id=family["id"], text="Good morning")
    for text in ("dinner at 8?", "@clawden_test_bot which restaurant?", "/ask@other_bot hi"):
        fake.send(family, ada, text)
    fake.send(family, ada, "/ask@clawden_test_bot which restaurant?")
    fake.send(family, ada, "/ask which restaurant?")
    fake.send(family, ada, "and the other one?", reply_to=sent["result"]["message_id"])
    fake.send(fake.private_chat(ada), ada, "hello in private")
    assert [m["text"] for m in await updates(api)] == [
        "/ask@clawden_test_bot which restaurant?",
        "/ask which restaurant?",
        "and the other one?",
        "hello in private",
    ]
    assert [m["text"] for m in fake.withheld] == [
        "dinner at 8?",
        "@clawden_test_bot which restaurant?",
        "/ask@other_bot hi",
    ]


async def test_with_privacy_mode_off_or_as_an_admin_the_bot_gets_every_group_message(
    fake: FakeTelegram, api: httpx.AsyncClient
) -> None:
    ada = fake.user("Ada")
    admin_of = fake.group("Club", bot_admin=True)
    fake.send(admin_of, ada, "dinner at 8?")
    fake.set_privacy(False)
    _, me = await call(api, "getMe")
    assert me["result"]["can_read_all_group_messages"] is True
    family = fake.group("Family")
    fake.send(family, ada, "lunch at 1?")
    assert [m["text"] for m in await updates(api)] == ["dinner at 8?", "lunch at 1?"]
    assert fake.withheld == []


async def test_a_privacy_change_reaches_a_group_only_once_the_bot_is_removed_and_re_added(
    fake: FakeTelegram, api: httpx.AsyncClient
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family")
    fake.set_privacy(False)
    fake.send(family, ada, "still private")
    joined = fake.readd(family, ada)
    fake.send(family, ada, "now it reads this")
    got = await updates(api)
    assert [m.get("text") or "joined" for m in got] == ["joined", "now it reads this"]
    assert got[0]["new_chat_members"][0]["id"] == fake.bot["id"] == joined["new_chat_members"][0]["id"]
    assert [m["text"] for m in fake.withheld] == ["still private"]


async def test_a_group_upgraded_to_a_supergroup_says_so_in_both_chats_and_refuses_the_old_id(
    fake: FakeTelegram, api: httpx.AsyncClient
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family", supergroup=False)
    supergroup = fake.migrate(family, by=ada)
    got = await updates(api)  # service messages reach a bot in privacy mode too
    assert [(m["chat"]["id"], m.get("migrate_to_chat_id"), m.get("migrate_from_chat_id")) for m in got] == [
        (family["id"], supergroup["id"], None),
        (supergroup["id"], None, family["id"]),
    ]
    status, body = await call(api, "sendMessage", chat_id=family["id"], text="hello?")
    assert (status, body["description"], body["parameters"]) == (
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        {"migrate_to_chat_id": supergroup["id"]},
    )
    assert supergroup["type"] == "supergroup" and str(supergroup["id"]).startswith("-100")


async def test_send_photo_refuses_what_telegram_refuses(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    chat = fake.private_chat(fake.user("Ada"))

    async def photo(data: bytes) -> str:
        response = await api.post(
            "sendPhoto", data={"chat_id": str(chat["id"])}, files={"photo": ("p.png", data, "image/png")}
        )
        body = response.json()
        return "ok" if body["ok"] else body["description"]

    assert image_size(png(1080, 9200)) == (1080, 9200)
    assert await photo(png(1280, 960)) == "ok"
    assert await photo(png(5000, 5001)) == "Bad Request: PHOTO_INVALID_DIMENSIONS"  # over 10000 in total
    assert await photo(png(2100, 100)) == "Bad Request: PHOTO_INVALID_DIMENSIONS"  # a ratio over 20
    assert await photo(png(2000, 100)) == "ok"  # exactly 20 is allowed
    assert await photo(b"GIF89a") == "Bad Request: IMAGE_PROCESS_FAILED"
    document = await api.post(
        "sendDocument",
        data={"chat_id": str(chat["id"])},
        files={"document": ("tall.png", png(1080, 9200), "image/png")},
    )
    assert document.json()["ok"]


async def test_a_photo_is_edited_through_its_caption_never_its_text(fake: FakeTelegram, api: httpx.AsyncClient) -> None:
    chat = fake.private_chat(fake.user("Ada"))
    sent = (
        await api.post(
            "sendPhoto",
            data={"chat_id": str(chat["id"]), "caption": "draft"},
            files={"photo": ("p.png", png(800, 600), "image/png")},
        )
    ).json()["result"]
    where = {"chat_id": chat["id"], "message_id": sent["message_id"]}
    status, body = await call(api, "editMessageText", **where, text="final")
    assert (status, body["description"]) == (400, "Bad Request: there is no text in the message to edit")
    status, body = await call(api, "editMessageCaption", **where, caption="final")
    assert status == 200 and body["result"]["caption"] == "final"
    status, body = await call(api, "editMessageCaption", **where, caption="x" * 1025)
    assert (status, body["description"]) == (400, "Bad Request: message caption is too long")
    _, text = await call(api, "sendMessage", chat_id=chat["id"], text="hello")
    status, body = await call(
        api, "editMessageCaption", chat_id=chat["id"], message_id=text["result"]["message_id"], caption="hi"
    )
    assert (status, body["description"]) == (400, "Bad Request: there is no caption in the message to edit")


async def test_an_update_nobody_fetched_for_24_hours_is_gone_and_the_next_one_keeps_counting() -> None:
    clock = Clock()
    fake = FakeTelegram(clock=clock).start_in_thread()
    try:
        ada = fake.user("Ada")
        chat = fake.private_chat(ada)
        old = fake.send(chat, ada, "still there?")
        clock.advance(24 * 3600 - 1)
        async with httpx.AsyncClient(base_url=f"{fake.url}/bot{fake.token}/", timeout=10) as api:
            _, kept = await call(api, "getUpdates")
            clock.advance(2)
            new = fake.send(chat, ada, "a day later")
            _, body = await call(api, "getUpdates")
        assert [u["message"]["text"] for u in kept["result"]] == ["still there?"]
        [update] = body["result"]
        assert update["message"] == new and new["date"] == int(clock.now)
        assert update["update_id"] == kept["result"][0]["update_id"] + 1
        assert [u["message"] for u in fake.expired] == [old]
    finally:
        fake.stop_thread()


async def test_a_bot_cannot_write_first_to_a_user_who_never_wrote_to_it(
    fake: FakeTelegram, api: httpx.AsyncClient
) -> None:
    ada = fake.user("Ada")  # known to Telegram (say, from a group), but she never started the bot
    status, body = await call(api, "sendMessage", chat_id=ada["id"], text="hello")
    assert (status, body) == (
        403,
        {"ok": False, "error_code": 403, "description": "Forbidden: bot can't initiate conversation with a user"},
    )
    fake.private_chat(ada)  # she presses Start
    assert (await call(api, "sendMessage", chat_id=ada["id"], text="hello"))[0] == 200


async def test_a_callback_query_answered_too_late_is_refused() -> None:
    clock = Clock()
    fake = FakeTelegram(clock=clock).start_in_thread()
    try:
        ada = fake.user("Ada")
        chat = fake.private_chat(ada)
        card = fake._send_message(
            {
                "chat_id": chat["id"],
                "text": "?",
                "reply_markup": {"inline_keyboard": [[{"text": "Yes", "callback_data": "y"}]]},
            }
        )
        prompt = fake.click(chat, card["message_id"], ada)
        late = fake.click(chat, card["message_id"], ada)
        async with httpx.AsyncClient(base_url=f"{fake.url}/bot{fake.token}/", timeout=10) as api:
            clock.advance(10)
            answered = await call(api, "answerCallbackQuery", callback_query_id=prompt)
            clock.advance(10)
            refused = await call(api, "answerCallbackQuery", callback_query_id=late)
        assert answered[0] == 200
        assert refused == (
            400,
            {
                "ok": False,
                "error_code": 400,
                "description": "Bad Request: query is too old and response timeout expired or query ID is invalid",
            },
        )
    finally:
        fake.stop_thread()


async def test_flood_limits_refuse_a_second_message_a_second_in_a_chat_and_a_21st_a_minute_in_a_group() -> None:
    clock = Clock()
    fake = FakeTelegram(clock=clock, flood_limits=True).start_in_thread()
    try:
        ada = fake.user("Ada")
        chat = fake.private_chat(ada)
        family = fake.group("Family")
        async with httpx.AsyncClient(base_url=f"{fake.url}/bot{fake.token}/", timeout=10) as api:
            assert (await call(api, "sendMessage", chat_id=chat["id"], text="one"))[0] == 200
            too_soon = await call(api, "sendMessage", chat_id=chat["id"], text="two")
            clock.advance(1)
            assert (await call(api, "sendMessage", chat_id=chat["id"], text="two"))[0] == 200
            for n in range(20):
                assert (await call(api, "sendMessage", chat_id=family["id"], text=f"{n}"))[0] == 200
                clock.advance(2)
            twenty_first = await call(api, "sendMessage", chat_id=family["id"], text="20")
        assert too_soon == (
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1},
            },
        )
        assert twenty_first[0] == 429 and twenty_first[1]["parameters"] == {"retry_after": 20}
    finally:
        fake.stop_thread()
