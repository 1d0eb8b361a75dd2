"""The Matrix bridge's pure part: events in as Clawden's, cards out as numbered text, refusals classified."""

from __future__ import annotations

from typing import Any

import pytest
from nio import ErrorResponse

from services.channels.bridge import ButtonRef
from services.channels.matrix import (
    Me,
    RoomView,
    card_content,
    chosen_number,
    classify,
    inbound_message,
    parse_credential,
    since_invited,
    strip_fallback,
    txn_id,
)

ME = Me("@clawden:example.org", "DEV", "Clawden")
DIRECT = RoomView("!abc", "", 2, False)
GROUP = RoomView("!Vz9Xv2lT8yQ", "Family", 4, False)  # a room v12 id: no server part


def message(content: dict[str, Any], sender: str = "@ada:example.org") -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": "$e1",
        "sender": sender,
        "origin_server_ts": 1_700_000_000_000,
        "content": content,
    }


def test_a_direct_room_message_is_addressed_and_keeps_its_room_id_whole() -> None:
    event = inbound_message(message({"msgtype": "m.text", "body": "hi"}), GROUP, ME, set())
    assert event is not None and event.route.chat_id == "!Vz9Xv2lT8yQ" and event.sent_at == 1_700_000_000.0
    direct = inbound_message(message({"msgtype": "m.text", "body": "hi"}), DIRECT, ME, set())
    assert direct is not None and direct.mentioned and not direct.is_group


@pytest.mark.parametrize(
    ("content", "mentioned"),
    [
        ({"msgtype": "m.text", "body": "dinner at 8?"}, False),
        ({"msgtype": "m.text", "body": "clawden, open late?"}, True),  # display name, any case
        ({"msgtype": "m.text", "body": "clawdenish words"}, False),  # not the name, only like it
        ({"msgtype": "m.text", "body": "@clawden:example.org news?"}, True),
        ({"msgtype": "m.text", "body": "news?", "m.mentions": {"user_ids": ["@clawden:example.org"]}}, True),
        ({"msgtype": "m.text", "body": "thanks", "m.relates_to": {"m.in_reply_to": {"event_id": "$mine"}}}, True),
        ({"msgtype": "m.text", "body": "thanks", "m.relates_to": {"m.in_reply_to": {"event_id": "$other"}}}, False),
    ],
)
def test_in_a_group_room_a_mention_or_a_reply_to_the_bot_addresses_it(content: dict[str, Any], mentioned: bool) -> None:
    event = inbound_message(message(content), GROUP, ME, {"$mine"})
    assert event is not None and event.is_group and event.mentioned is mentioned


def test_a_thread_message_is_in_its_thread_and_its_fallback_is_no_reply() -> None:
    content = {
        "msgtype": "m.text",
        "body": "which train?",
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$last"},
        },
    }
    event = inbound_message(message(content), GROUP, ME, set())
    assert event is not None
    assert (event.route.thread_id, event.reply_to, event.supports_threads) == ("$root", None, True)


def test_edits_notices_and_empty_messages_are_not_new_messages() -> None:
    edit = {"msgtype": "m.text", "body": "* fixed", "m.relates_to": {"rel_type": "m.replace", "event_id": "$e0"}}
    assert inbound_message(message(edit), DIRECT, ME, set()) is None
    assert inbound_message(message({"msgtype": "m.notice", "body": "bot says"}), DIRECT, ME, set()) is None
    assert inbound_message(message({"msgtype": "m.text", "body": ""}), DIRECT, ME, set()) is None


def test_a_file_message_is_an_attachment_with_its_caption_as_text() -> None:
    content = {
        "msgtype": "m.image",
        "body": "look at this",
        "filename": "cat.png",
        "url": "mxc://x/abc",
        "info": {"mimetype": "image/png", "size": 1234},
    }
    event = inbound_message(message(content), DIRECT, ME, set())
    assert event is not None and event.text == "look at this"
    [attachment] = event.attachments
    assert (attachment.name, attachment.mime, attachment.size, attachment.url) == (
        "cat.png",
        "image/png",
        1234,
        "mxc://x/abc",
    )


def test_an_old_clients_reply_quote_is_cut() -> None:
    assert strip_fallback("> <@bob:x> the question\n> more\n\nmy answer") == "my answer"
    assert strip_fallback("no quote here") == "no quote here"


def test_a_card_is_numbered_text_and_a_number_reply_chooses() -> None:
    body, formatted = card_content("Allow GitHub?", [[ButtonRef("Allow", "t:0"), ButtonRef("Deny <now>", "t:1")]])
    assert body == "Allow GitHub?\n\n1) Allow\n2) Deny <now>\n\nReply to this message with the number of your choice."
    assert "<li>Deny &lt;now&gt;</li>" in formatted
    assert [chosen_number(text, 2) for text in ("1", " 2) ", "#2", "3", "0", "yes 1", "")] == [
        0,
        1,
        1,
        None,
        None,
        None,
        None,
    ]


def test_refusals_are_classified_for_the_retry_policy() -> None:
    limited = classify(ErrorResponse("Too Many Requests", "M_LIMIT_EXCEEDED", retry_after_ms=1500), "send")
    assert (limited.kind, limited.retry_after) == ("rate_limited", 1.5)
    assert classify(ErrorResponse("Unknown token", "M_UNKNOWN_TOKEN"), "send").kind == "transient"
    forbidden = ErrorResponse("not in room", "M_FORBIDDEN")
    forbidden.transport_response = type("R", (), {"status": 403})()
    assert classify(forbidden, "send").kind == "permanent"


def test_transaction_ids_are_stable_per_part_and_the_credential_parses() -> None:
    assert txn_id("out-1#0") == txn_id("out-1#0") != txn_id("out-1#1")
    assert parse_credential('{"access_token": "syt_abcdefgh", "device_id": "D1"}').device_id == "D1"
    assert parse_credential("syt_bare_token_1").access_token == "syt_bare_token_1"


def member(state_key: str, membership: str, before: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "m.room.member", "state_key": state_key, "content": {"membership": membership}}
    if before:
        event["unsigned"] = {"prev_content": {"membership": before}}
    return event


def test_a_room_just_joined_is_read_from_the_bots_invite_on_and_a_profile_change_is_no_boundary() -> None:
    old, between, new = message({"body": "old"}), message({"body": "between"}), message({"body": "new"})
    timeline = [old, member(ME.user_id, "invite"), between, member(ME.user_id, "join", "invite"), new]
    assert since_invited(timeline, ME.user_id) == [between, member(ME.user_id, "join", "invite"), new]
    assert since_invited([old, member(ME.user_id, "join"), new], ME.user_id) == [new]  # joined without an invite
    renamed = [old, member(ME.user_id, "join", "join"), new]  # the bot's display name changed
    assert since_invited(renamed, ME.user_id) == renamed
    assert since_invited([old, member("@ada:example.org", "invite"), new], ME.user_id) == [
        old,
        member("@ada:example.org", "invite"),
        new,
    ]
