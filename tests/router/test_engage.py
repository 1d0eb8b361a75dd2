"""The routing decision, without a broker."""

from __future__ import annotations

from clawden.bus import events as ev
from services.router.engage import Drop, Engagement, Wiring, command_of, decide


def msg(text: str = "hi", chat: str = "terminal", channel: str = "local", bot: bool = False) -> ev.InboundMessage:
    return ev.InboundMessage(route=ev.Route(channel=channel, chat_id=chat), message_id="1",
                             sender=ev.Sender(id="u", is_bot=bot), text=text, sent_at=0.0)


def test_a_wildcard_wiring_engages_every_chat_of_its_channel() -> None:
    wirings = [Wiring("main", "local", "*")]
    assert decide(msg(chat="other"), wirings) == [Engagement("main", ev.Route(channel="local", chat_id="other"))]


def test_every_wired_group_is_engaged_once() -> None:
    wirings = [Wiring("b", "local", "terminal"), Wiring("a", "local", "*"), Wiring("a", "local", "terminal")]
    assert [e.agent_group for e in decide(msg(), wirings)] == ["a", "b"]  # type: ignore[union-attr]


def test_an_unwired_chat_is_dropped_with_a_reason() -> None:
    assert decide(msg(channel="telegram"), [Wiring("main", "local", "*")]) == Drop(
        "chat is not wired to any agent group")


def test_bots_and_empty_messages_are_dropped() -> None:
    wirings = [Wiring("main", "local", "*")]
    assert isinstance(decide(msg(bot=True), wirings), Drop)
    assert isinstance(decide(msg(text="   "), wirings), Drop)


def test_clear_is_a_command_and_other_slash_words_are_text() -> None:
    assert command_of("/clear") == "clear"
    assert command_of("  /CLEAR please") == "clear"
    assert command_of("/weather") == ""
    assert command_of("") == ""
