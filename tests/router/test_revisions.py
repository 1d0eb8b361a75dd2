"""People's edits and deletes at the router: they follow the message to the sessions it went to, and go
nowhere when it went nowhere (real SQLite)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from clawden.bus import events as ev
from services.router.store import Outcome, RouterStore

NOW = 1_000.0


def msg(text: str, *, channel: str, chat: str, sender: str) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel=channel, chat_id=chat), message_id="m1", sender=ev.Sender(id=sender, name="Bob"),
        text=text, sent_at=NOW,
    )  # fmt: skip


def wakes(store: RouterStore, outcome: Outcome) -> list[ev.Wake]:
    """The wakes the outbox holds, cleared as the adapter would after publishing them."""
    store.published([o.id for o in outcome.outgoing])
    return [e for o in outcome.outgoing if isinstance(e := ev.decode(o.payload), ev.Wake)]


@pytest.fixture
def store(tmp_path: Path) -> RouterStore:
    s = RouterStore.open(tmp_path / "router.db")
    s.seed("main", "local", "alice", NOW)  # main answers every local chat
    return s


def edit(
    text: str, *, n: int = 1, sender: str = "local:bob", chat: str = "terminal", channel: str = "local"
) -> ev.InboundEdit:
    return ev.InboundEdit(
        route=ev.Route(channel=channel, chat_id=chat), message_id=f"m{n}", edit_id=f"e{n}-{text}",
        sender=ev.Sender(id=sender, name="Bob"), text=text, edited_at=NOW + 1,
    )  # fmt: skip


def delete(*, n: int = 1, chat: str = "terminal", channel: str = "local") -> ev.InboundDelete:
    return ev.InboundDelete(route=ev.Route(channel=channel, chat_id=chat), message_id=f"m{n}", deleted_at=NOW + 2)


def first(store: RouterStore, text: str = "whats 2+") -> ev.Wake:
    [wake] = wakes(store, store.route_batch([msg(text, channel="local", chat="terminal", sender="local:bob")], NOW))
    return wake


def test_an_edit_follows_the_message_to_its_session_and_names_its_row(store: RouterStore) -> None:
    original = first(store)

    [wake] = wakes(store, store.route_batch([edit("whats 2+2")], NOW + 1))

    assert wake.session_id == original.session_id and wake.route == original.route
    m = wake.message
    assert (m.revision, m.revises, m.text, m.trigger) == ("edit", original.message.id, "whats 2+2", True)
    assert m.platform_message_id == "m1" and m.kind == "chat"
    assert wake.key != original.key  # a row of its own, after the original


def test_a_delete_follows_the_message_and_wakes_nobody(store: RouterStore) -> None:
    original = first(store)

    [wake] = wakes(store, store.route_batch([delete()], NOW + 2))

    assert wake.session_id == original.session_id
    assert (wake.message.revision, wake.message.revises, wake.message.trigger) == ("delete", original.message.id, False)


def test_two_edits_of_one_message_are_two_rows_and_a_redelivered_one_is_one(store: RouterStore) -> None:
    first(store)
    one, two = edit("whats 2+2"), edit("whats 2+3")

    out = store.route_batch([one, two, one], NOW + 1)

    assert [w.message.text for w in wakes(store, out)] == ["whats 2+2", "whats 2+3"]
    assert out.counts["duplicates"] == 1


def test_an_edit_of_a_message_never_passed_on_goes_nowhere(
    store: RouterStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A Telegram chat nobody wired: its messages reach no agent, and neither do their edits or deletes.
    unrouted = msg("hello", channel="telegram", chat="c9", sender="telegram:u1")
    store.route_batch([unrouted], NOW)
    caplog.set_level(logging.DEBUG, "clawden.router")

    out = store.route_batch(
        [edit("hello!", channel="telegram", chat="c9", sender="telegram:u1"), delete(channel="telegram", chat="c9")],
        NOW + 1,
    )

    assert wakes(store, out) == []
    assert out.counts["revisions_ignored"] == 2
    assert "was never passed on" in caplog.text


def test_an_edit_alone_never_engages_even_when_the_message_is_unknown(store: RouterStore) -> None:
    # An edit of a message the router never saw (from before the wiring): not answered out of the blue.
    out = store.route_batch([edit("are you there?", n=7)], NOW)

    assert wakes(store, out) == [] and out.counts["revisions_ignored"] == 1


def test_an_edit_by_someone_else_than_the_author_is_refused(store: RouterStore) -> None:
    first(store)

    out = store.route_batch([edit("forged", sender="local:mallory")], NOW + 1)

    assert wakes(store, out) == [] and out.counts["revisions_refused"] == 1


def test_where_a_message_went_is_forgotten_with_its_key(store: RouterStore) -> None:
    first(store)

    store.prune(NOW + 31 * 86400)

    assert wakes(store, store.route_batch([edit("late")], NOW + 31 * 86400)) == []
