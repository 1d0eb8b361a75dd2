"""People's edits and deletes on Slack reach the bus as edits and deletes of the message they were (real
NATS, the bridge process, the fake Slack speaking Socket Mode)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawden.bus import events as ev
from services.channels.slack import Me, inbound_delete, inbound_edit
from tests.channels.slack_harness import SlackBridge, SlackBus
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.slack import BOT_USER, FakeSlack

ME = Me(BOT_USER, "B0BOT", "T0TEAM")


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start_in_thread()
    yield fake
    fake.stop_thread()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[SlackBus]:
    b = await SlackBus.open(nats_server.url)
    assert isinstance(b, SlackBus)
    yield b
    await b.close()


@pytest.fixture
def bridge(tmp_path: Path, nats_server: NatsServer, slack: FakeSlack) -> Iterator[SlackBridge]:
    b = SlackBridge(tmp_path / "home", nats_server.url, slack)
    yield b
    b.close()


async def test_an_edit_and_a_delete_in_a_thread_become_events_naming_the_message(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    general = slack.channel("general", ada)
    bridge.start()
    root = slack.say(general, ada, f"<@{BOT_USER}> plan the trip")
    reply = slack.say(general, ada, f"<@{BOT_USER}> for 3 peple", thread_ts=root)
    slack.unfurl(general, reply)  # a link preview: not an edit
    slack.edit(general, reply, f"<@{BOT_USER}> for 3 people")
    slack.delete(general, root)

    async def all_in() -> list[Any] | None:
        found = await bus.inbound()
        return found if any(isinstance(e, ev.InboundDelete) for e in found) else None

    found = await eventually(all_in, timeout=20, message="the delete never reached the bus")

    messages = [e for e in found if isinstance(e, ev.InboundMessage)]
    [edit] = [e for e in found if isinstance(e, ev.InboundEdit)]  # the unfurl, before it, made none
    [delete] = [e for e in found if isinstance(e, ev.InboundDelete)]
    threaded = next(m for m in messages if m.route.thread_id == root)
    assert (edit.message_id, edit.route, edit.sender, edit.text) == (
        threaded.message_id,
        threaded.route,
        threaded.sender,
        "for 3 people",
    )
    first = next(m for m in messages if m.route.thread_id is None)
    assert (delete.message_id, delete.route, delete.sender) == (first.message_id, first.route, None)


def changed(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "subtype": "message_changed", "channel": "C1", "channel_type": "channel",
            "ts": "20.000001", "message": after, "previous_message": before}  # fmt: skip


MESSAGE = {"type": "message", "user": "U1", "text": "helo", "ts": "10.000001"}


@pytest.mark.parametrize(
    ("after", "edit"),
    [
        pytest.param(dict(MESSAGE, text="hello", edited={"user": "U1", "ts": "20.000001"}), "hello", id="an edit"),
        pytest.param(dict(MESSAGE, attachments=[{"title": "x"}]), None, id="a link preview: no edited"),
        pytest.param(dict(MESSAGE, edited={"user": "U1", "ts": "20.000001"}), None, id="the same text"),
        pytest.param(dict(MESSAGE, text="hi", edited={"ts": "2.0"}, bot_id="B2"), None, id="another bot's"),
        pytest.param(dict(MESSAGE, text="", edited={"user": "U1", "ts": "20.000001"}), None, id="nothing left"),
    ],
)
def test_only_a_persons_changed_text_is_an_edit(after: dict[str, Any], edit: str | None) -> None:
    found = inbound_edit(changed(after, MESSAGE), ME, set())

    assert (found.text if found else None) == edit
    if found is not None:
        assert (found.message_id, found.edit_id, found.edited_at) == ("C1:10.000001", "20.000001", 20.000001)


def test_a_delete_of_the_bots_own_message_is_not_news() -> None:
    event = {"type": "message", "subtype": "message_deleted", "channel": "C1", "ts": "30.0", "deleted_ts": "10.0"}

    assert inbound_delete(dict(event, previous_message={"user": BOT_USER, "ts": "10.0"}), ME) is None
    person = inbound_delete(dict(event, previous_message={"user": "U1", "ts": "10.0", "thread_ts": "9.0"}), ME)
    assert person is not None and (person.message_id, person.route.thread_id) == ("C1:10.0", "9.0")
