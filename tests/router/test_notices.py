"""Where the router's own notices to the owners go, and what they say."""

from __future__ import annotations

import pytest

from clawden.bus import events as ev
from services.router.notices import messages_lost, owner_chats


@pytest.mark.parametrize(
    ("owners", "channel", "chats"),
    [
        # A Telegram private chat's id is the user's id: each owner there hears it in their own chat.
        (["telegram:7", "local:ada", "telegram:9"], "telegram", [("telegram", "7"), ("telegram", "9")]),
        # No owner there, or a platform whose direct chats the router cannot derive: the machine's terminal.
        (["local:ada"], "telegram", [("local", "terminal")]),
        (["slack:U1", "local:ada"], "slack", [("local", "terminal")]),
        # Nobody to tell: the log says it.
        (["slack:U1"], "slack", []),
        ([], "telegram", []),
    ],
)
def test_a_notice_goes_to_each_owner_where_they_read_the_channel(
    owners: list[str], channel: str, chats: list[tuple[str, str]]
) -> None:
    assert [(r.channel, r.chat_id) for r in owner_chats(owners, channel)] == chats


def test_the_lost_messages_notice_says_how_many_since_when_and_why_under_a_key_per_gap_and_chat() -> None:
    lost = ev.MessagesLost(
        channel="telegram",
        marker="905",
        count=2,
        since=86_400.0,
        why="Telegram keeps messages for a bot 24 hours, and the bot was away longer",
    )
    notice = messages_lost(lost, ev.Route(channel="telegram", chat_id="7"))
    assert notice.text.startswith("⚠️ 2 messages sent on telegram since 1970-01-02 00:00 UTC never reached me")
    assert "(Telegram keeps messages for a bot 24 hours, and the bot was away longer)" in notice.text
    assert (notice.id, notice.kind) == ("router:telegram:lost:905:7", "notice")
    unknown = messages_lost(ev.MessagesLost(channel="telegram", marker="1"), ev.Route(channel="local", chat_id="t"))
    assert unknown.text.startswith("⚠️ Messages sent on telegram never reached me")
