"""Telegram updates become Clawden events: who spoke, where, whether the bot was addressed."""

from __future__ import annotations

from typing import Any

import pytest

from clawden.bus import events as ev
from services.channels import telegram
from services.channels.bridge import ButtonRef
from services.channels.retry import PlatformError
from services.channels.telegram import (
    BotIdentity,
    addresses_bot,
    albums,
    entity_text,
    group_reach,
    inbound_message,
    inline_keyboard,
    platform_message_id,
)
from services.router import engage
from tests.fakes import telegram as fake_telegram
from tests.fakes.telegram import ANONYMOUS_ADMIN, CHANNEL_BOT, TELEGRAM_SERVICE, auto_entities

BOT = BotIdentity(id=7012345678, username="Clawden_Bot")
ADA = {"id": 42, "is_bot": False, "first_name": "Ada", "last_name": "L", "username": "ada"}
PRIVATE = {"id": 42, "type": "private", "first_name": "Ada"}
GROUP = {"id": -1001, "type": "supergroup", "title": "Family"}


def message(text: str, chat: dict[str, Any] = GROUP, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"message_id": 5, "from": ADA, "chat": chat, "date": 1700000000, "text": text}
    if entities := auto_entities(text):
        msg["entities"] = entities
    return msg | extra


def test_a_private_message_is_addressed_to_the_bot_and_keyed_by_chat_and_number() -> None:
    event = inbound_message(message("hello", PRIVATE), BOT)
    assert event == ev.InboundMessage(
        route=ev.Route(channel="telegram", chat_id="42"),
        message_id="42:5",
        sender=ev.Sender(id="telegram:42", name="Ada L"),
        text="hello",
        sent_at=1700000000.0,
        is_group=False,
        chat_name="Ada",
        mentioned=True,
    )
    assert event.key == "telegram:42:5"


def test_a_group_message_without_a_mention_is_not_addressed() -> None:
    event = inbound_message(message("dinner at 8?"), BOT)
    assert event is not None and event.is_group and not event.mentioned and event.chat_name == "Family"


def test_a_mention_counts_in_any_letter_case_even_after_an_emoji() -> None:
    # The emoji takes two UTF-16 units: slicing the str by the entity offset would miss the name.
    assert addresses_bot(message("😀😀 hey @clawden_bot what's up"), BOT)


def test_a_mention_of_someone_else_does_not_count() -> None:
    assert not addresses_bot(message("ask @clawden_bot_fan about it"), BOT)


def test_a_text_mention_of_the_bots_id_counts() -> None:
    msg = message(
        "hey Clawden",
        entities=[
            {
                "type": "text_mention",
                "offset": 4,
                "length": 7,
                "user": {"id": BOT.id, "is_bot": True, "first_name": "Clawden"},
            }
        ],
    )
    assert addresses_bot(msg, BOT)


def test_a_command_for_this_bot_counts_and_one_for_another_bot_does_not() -> None:
    assert addresses_bot(message("/status@clawden_bot"), BOT)
    assert not addresses_bot(message("/status@other_bot"), BOT)


def test_a_reply_to_the_bots_message_counts_as_addressing_it() -> None:
    reply = {
        "message_id": 4,
        "from": {"id": BOT.id, "is_bot": True, "first_name": "Clawden"},
        "chat": GROUP,
        "date": 1,
        "text": "earlier answer",
    }
    event = inbound_message(message("and then?", reply_to_message=reply), BOT)
    assert event is not None and event.mentioned and event.reply_to == "-1001:4"


def test_ask_with_the_bots_name_addresses_it_and_hands_on_only_the_question() -> None:
    # In privacy mode `/ask@bot <question>` is one of the few group messages Telegram delivers.
    for text in ("/ask@Clawden_Bot which restaurant is open late", "/ask which restaurant is open late"):
        event = inbound_message(message(text), BOT)
        assert event is not None and event.mentioned and event.text == "which restaurant is open late"


def test_ask_meant_for_another_bot_is_not_for_this_one() -> None:
    event = inbound_message(message("/ask@other_bot which restaurant"), BOT)
    assert event is not None and not event.mentioned and event.text == "/ask@other_bot which restaurant"


def test_the_privacy_mode_getme_reports_is_said_with_how_to_change_it() -> None:
    on = group_reach(BOT)
    off = group_reach(BotIdentity(BOT.id, BOT.username, reads_all_groups=True))
    assert on.messages == "addressed" and "/ask@Clawden_Bot" in on.note and "/setprivacy" in on.note
    assert "never an @mention" in on.note and "remove the bot from each group and add it again" in on.note
    assert off.messages == "all" and off.note.startswith("privacy mode off")


def test_a_forum_topic_is_a_thread_and_other_replies_are_not() -> None:
    forum = GROUP | {"is_forum": True}
    topic = inbound_message(message("hi", forum, message_thread_id=77, is_topic_message=True), BOT)
    plain = inbound_message(message("hi", GROUP, message_thread_id=77), BOT)
    assert topic is not None and topic.route.thread_id == "77" and topic.supports_threads
    assert plain is not None and plain.route.thread_id is None


def test_a_document_becomes_an_attachment_and_its_caption_the_text() -> None:
    msg = {
        "message_id": 9,
        "from": ADA,
        "chat": PRIVATE,
        "date": 1,
        "caption": "the report",
        "document": {
            "file_id": "F1",
            "file_unique_id": "U1",
            "file_name": "q3.pdf",
            "mime_type": "application/pdf",
            "file_size": 1234,
        },
    }
    event = inbound_message(msg, BOT)
    assert event is not None and event.text == "the report"
    assert event.attachments == (ev.Attachment(name="q3.pdf", mime="application/pdf", size=1234),)


def test_service_messages_are_not_chat() -> None:
    assert (
        inbound_message({"message_id": 3, "from": ADA, "chat": GROUP, "date": 1, "new_chat_members": [ADA]}, BOT)
        is None
    )


NEWS: dict[str, Any] = {"id": -100777, "type": "channel", "title": "News"}


def test_an_anonymous_admin_speaks_as_the_group_not_as_a_bot() -> None:
    # Telegram's shape: a stand-in bot in `from`, the group itself in `sender_chat`.
    msg = message("/ask@Clawden_Bot who cooks tonight?") | {"from": ANONYMOUS_ADMIN, "sender_chat": GROUP}
    event = inbound_message(msg, BOT)
    assert event is not None and event.mentioned
    assert event.sender == ev.Sender(id="telegram:chat:-1001", name="Family", is_bot=False)


def test_someone_posting_as_a_channel_and_a_linked_channels_post_speak_as_the_channel() -> None:
    as_channel = message("hello") | {"from": CHANNEL_BOT, "sender_chat": NEWS}
    forwarded = message("new post") | {"from": TELEGRAM_SERVICE, "sender_chat": NEWS, "is_automatic_forward": True}
    for msg in (as_channel, forwarded):
        event = inbound_message(msg, BOT)
        assert event is not None and event.sender == ev.Sender(id="telegram:chat:-100777", name="News")


def test_entity_text_counts_utf16_units() -> None:
    assert entity_text("\U0001d54f @bot", {"offset": 3, "length": 4}) == "@bot"


def test_message_ids_accept_clawdens_form_and_bare_numbers() -> None:
    assert platform_message_id("-1001:42") == 42
    assert platform_message_id("42") == 42
    assert platform_message_id("abc") is None


def test_buttons_become_an_inline_keyboard_with_their_short_data() -> None:
    rows = [[ButtonRef("Approve", "tok:0"), ButtonRef("Deny", "tok:1")]]
    assert inline_keyboard(rows) == {
        "inline_keyboard": [[{"text": "Approve", "callback_data": "tok:0"}, {"text": "Deny", "callback_data": "tok:1"}]]
    }


def test_an_albums_parts_group_together_only_within_one_chat_and_in_a_row() -> None:
    def part(update: int, chat: dict[str, Any], album: str | None) -> dict[str, Any]:
        msg = message("", chat) | {"message_id": update}
        return {"update_id": update, "message": msg | ({"media_group_id": album} if album else {})}

    updates = [
        part(1, GROUP, "a"),
        part(2, GROUP, "a"),
        part(3, PRIVATE, "a"),
        part(4, GROUP, None),
        part(5, GROUP, "a"),
    ]
    assert [[u["update_id"] for u in g] for g in albums(updates)] == [[1, 2], [3], [4], [5]]


def test_an_animation_is_one_attachment_though_telegram_also_sends_it_as_a_document() -> None:
    gif = {
        "file_id": "A1",
        "file_unique_id": "U1",
        "file_name": "dance.mp4",
        "mime_type": "video/mp4",
        "file_size": 5000,
    }
    event = inbound_message(
        {"message_id": 9, "from": ADA, "chat": PRIVATE, "date": 1, "animation": gif, "document": gif}, BOT
    )
    assert event is not None and event.attachments == (ev.Attachment(name="dance.mp4", mime="video/mp4", size=5000),)


@pytest.mark.parametrize(
    ("emoji", "sent"),
    [
        ("👍", "👍"),
        ("❤️", "❤"),
        ("👍🏽", "👍"),
        ("✍🏻", "✍"),
        ("✅", "👌"),
        ("👋", "🤗"),
        ("🚀", "🔥"),
        ("😂", "🤣"),
        ("❤\u200d🔥", "❤\u200d🔥"),
    ],
)
def test_a_reaction_is_one_telegram_accepts(emoji: str, sent: str) -> None:
    assert telegram.allowed_reaction(emoji) == sent


def test_a_reaction_with_no_near_one_is_refused_with_the_list() -> None:
    with pytest.raises(PlatformError, match="Telegram takes no 🦜 reaction; it accepts only 👍 👎"):
        telegram.allowed_reaction("🦜")


def test_the_bridge_and_the_fake_agree_on_telegrams_reactions() -> None:
    assert set(telegram.REACTIONS) == fake_telegram.REACTIONS and len(telegram.REACTIONS) == 73
    assert set(telegram.NEAREST.values()) <= fake_telegram.REACTIONS


def test_the_implicit_reply_to_a_topics_first_message_is_no_reply_and_does_not_address_the_bot() -> None:
    fake = fake_telegram.FakeTelegram()
    ada, bob = fake.user("Ada"), fake.user("Bob")
    forum = fake.group("Family", forum=True)
    trip = fake.topic(forum, fake.bot, "Trip")  # the bot opened the topic: its first message is the bot's
    plain = fake.send(forum, ada, "what about Tuesday?", thread_id=trip)
    answer = fake.send(forum, bob, "Tuesday works", thread_id=trip, reply_to=plain["message_id"])
    assert plain["reply_to_message"]["forum_topic_created"] == {"name": "Trip", "icon_color": 7322096}
    bot = BotIdentity(int(fake.bot["id"]), str(fake.bot["username"]))
    first, second = inbound_message(plain, bot), inbound_message(answer, bot)
    assert first is not None and second is not None
    assert (first.route.thread_id, first.reply_to, first.mentioned) == (str(trip), None, False)
    assert (second.reply_to, second.mentioned) == (f"{forum['id']}:{plain['message_id']}", False)


def test_a_private_chat_topic_survives_routing_as_a_thread() -> None:
    fake = fake_telegram.FakeTelegram(private_topics=True)
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    trip = fake.topic(chat, ada, "Trip")
    event = inbound_message(fake.send(chat, ada, "book the train", thread_id=trip), BOT)
    assert event is not None
    assert engage.effective_thread(event) == str(trip)
