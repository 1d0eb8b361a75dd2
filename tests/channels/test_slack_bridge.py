"""The Slack bridge as it runs (`clawden run channel@slack`), with real NATS and the fake Slack (Web API over
HTTP, Socket Mode over a real WebSocket): envelopes stored once, then acknowledged, through drops,
disconnects and redeliveries; answers, cards, files and rate limits out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import nats
import pytest

from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from clawden.cli import status
from services.channels import slack as slack_bridge
from services.channels.slack import Me, card_blocks, escape, inbound_delete, inbound_edit, inbound_message
from tests.channels.harness import ChannelProcess, listening, until
from tests.channels.slack_harness import SlackBridge, SlackBus
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.slack import BOT_USER, Drop, Error, FakeSlack
from tests.fakes.trickle import Trickle


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
    assert slack.bot_token not in b.output() and slack.app_token not in b.output(), "a token reached the log"


async def messages(bus: SlackBus, count: int, timeout: float = 20) -> list[ev.InboundMessage]:
    found: list[ev.InboundMessage] = []

    async def enough() -> bool:
        found[:] = [e for e in await bus.inbound() if isinstance(e, ev.InboundMessage)]
        return len(found) >= count

    deadline = time.monotonic() + timeout
    while not await enough():
        assert time.monotonic() < deadline, f"{len(found)} of {count} inbound messages: {found[-3:]}"
        await asyncio.sleep(0.1)
    return found


def reconnected(slack: FakeSlack, connections: int) -> Callable[[], bool]:
    return lambda: slack.connections >= connections


# --- the pure part ------------------------------------------------------------------------------------------


def test_text_is_escaped_and_a_mention_of_the_bot_is_dropped_from_what_the_agent_reads() -> None:
    me = Me(BOT_USER, "B0BOT", "T0TEAM")
    assert escape("a < b && c > d") == "a &lt; b &amp;&amp; c &gt; d"
    event = {
        "type": "message",
        "channel": "C1",
        "channel_type": "channel",
        "user": "U1",
        "ts": "10.000001",
        "text": f"<@{BOT_USER}> is 1 &lt; 2?",
    }
    message = inbound_message(event, me, set())
    assert message is not None and (message.text, message.mentioned, message.is_group) == ("is 1 < 2?", True, True)
    plain = inbound_message(dict(event, text="lunch?"), me, set())
    assert plain is not None and not plain.mentioned
    in_my_thread = inbound_message(dict(event, text="and then?", thread_ts="9.000001"), me, {"C1:9.000001"})
    assert in_my_thread is not None and in_my_thread.mentioned and in_my_thread.route.thread_id == "9.000001"
    for ignored in (
        {"subtype": "message_changed"},
        {"subtype": "message_deleted"},
        {"bot_id": "B2"},
        {"user": BOT_USER},
    ):
        assert inbound_message(dict(event, **ignored), me, set()) is None


def test_a_card_is_a_section_and_a_row_of_buttons_whose_values_are_the_button_data() -> None:
    from services.channels.bridge import ButtonRef

    blocks = card_blocks("Allow <GitHub>?", [[ButtonRef("Approve", "tok:0", "primary"), ButtonRef("Deny", "tok:1")]])
    assert blocks[0]["text"]["text"] == "Allow &lt;GitHub&gt;?"
    assert [(e["value"], e.get("style")) for e in blocks[1]["elements"]] == [("tok:0", "primary"), ("tok:1", None)]


# --- in -------------------------------------------------------------------------------------------------------


async def test_a_dm_a_mention_and_a_thread_reply_are_stored_once_each_and_a_plain_message_unaddressed(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    general = slack.channel("general", ada)
    bridge.start()
    slack.say(dm, ada, "hello in private")
    asked = slack.say(general, ada, f"<@{BOT_USER}> what is on today?")  # a `message` and an `app_mention`
    slack.say(general, ada, "lunch, anyone?")
    slack.say(general, ada, f"<@{BOT_USER}> and tomorrow?", thread_ts=asked)
    got = {m.text: m for m in await messages(bus, 4)}
    await until(lambda: slack.unacked == 0, 10, "envelopes left unacknowledged")
    assert len(await bus.inbound()) == 4, "the mention was stored twice"
    assert (got["hello in private"].mentioned, got["hello in private"].is_group) == (True, False)
    assert got["what is on today?"].mentioned and got["what is on today?"].route.chat_id == general
    assert not got["lunch, anyone?"].mentioned
    assert got["and tomorrow?"].route.thread_id == asked
    assert got["hello in private"].sender.id == f"slack:{ada}"
    assert not slack.late_acks


async def test_drops_disconnects_and_duplicated_envelopes_lose_nothing_and_store_nothing_twice(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    bridge.start()
    slack.duplicate(40)
    sent = 0
    for round in range(20):
        for _ in range(10):
            slack.say(dm, ada, f"message {sent}")
            sent += 1
        if round % 2:
            slack.drop_socket()
        else:
            slack.disconnect()
        await until(reconnected(slack, round + 2), 20, lambda: bridge.output()[-2000:])
    got = await messages(bus, sent, timeout=30)
    await until(lambda: slack.unacked == 0, 20, "envelopes left unacknowledged")
    texts = [m.text for m in await messages(bus, sent)]
    assert sorted(texts) == sorted(f"message {i}" for i in range(sent)) and len(got) == sent
    assert not slack.late_acks, slack.late_acks


async def test_a_file_from_a_person_is_fetched_with_the_bot_token(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    bridge.start()
    slack.say(dm, ada, "my notes", files=[b"milk, eggs"], names=["list.txt"])
    [message] = await messages(bus, 1)
    [attachment] = message.attachments
    assert attachment.name == "list.txt"
    stored = Path(url2pathname(urlsplit(attachment.url).path))
    assert await asyncio.to_thread(stored.read_bytes) == b"milk, eggs"


async def test_a_file_slack_cannot_hand_over_for_a_while_waits_in_its_chat_and_arrives(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    """Slack's file server answers 503 for longer than the bridge's first try: the message waits for its file, and
    its chat's next message waits behind it (the chat's order holds), while another chat's message goes at once."""
    ada, bea = slack.user("ada"), slack.user("bea")
    with_ada, with_bea = slack.dm(ada), slack.dm(bea)
    slack.inject("download", *[Error(503)] * 3)
    bridge.start()
    slack.say(with_ada, ada, "my notes", files=[b"milk, eggs"], names=["list.txt"])
    slack.say(with_ada, ada, "did you get them?")
    await until(lambda: len(slack.calls_to("download")) >= 1, 10, "the file was never asked for")
    slack.say(with_bea, bea, "hello")
    got = await messages(bus, 3, timeout=40)
    assert [m.text for m in got] == ["hello", "my notes", "did you get them?"]
    stored = Path(url2pathname(urlsplit(got[1].attachments[0].url).path))
    assert await asyncio.to_thread(stored.read_bytes) == b"milk, eggs"
    assert [c.outcome for c in slack.calls_to("download")] == ["fault 503"] * 3 + ["ok"]


async def test_a_slow_download_holds_up_neither_the_listener_nor_another_chat(
    slack: FakeSlack, bus: SlackBus, tmp_path: Path
) -> None:
    """A big file from a slow file server is fetched by its chat's own task: the listener goes on (the envelope is
    acknowledged, another chat's message is stored at once), and the file's message is stored once it is whole."""
    trickle = slack.trickle = Trickle(chunk=64 * 1024)
    ada, bob = slack.user("ada"), slack.user("bob")
    data = bytes(range(256)) * 1024  # four chunks
    bridge = slack_bridge.SlackBridge(slack.url, slack_bridge.parse_tokens(slack.token))
    async with listening(bridge, bus.js, tmp_path) as (_, stats):
        await until(lambda: slack.connections == 1, 10)
        slack.say(slack.dm(ada), ada, "the recording", files=[data], names=["talk.bin"])
        slack.say(slack.dm(bob), bob, "hello")
        [first] = await messages(bus, 1)
        assert (first.text, trickle.sent) == ("hello", 0)  # stored while the download has not begun to arrive
        trickle.step(4)
        await until(lambda: stats.inbound == 2, 10, "the file's message was never stored")
        assert not trickle.aborted.is_set() and stats.reconnects == 0
    _, message = await messages(bus, 2)
    stored = Path(url2pathname(urlsplit(message.attachments[0].url).path))
    assert await asyncio.to_thread(stored.read_bytes) == data


# --- out ------------------------------------------------------------------------------------------------------


async def test_answers_go_to_their_thread_escaped_and_split_and_a_user_id_reaches_their_dm(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    general = slack.channel("general", ada)
    asked = slack.say(general, ada, f"<@{BOT_USER}> compare")
    bridge.start()
    await bus.send(general, "1 < 2 & 3 > 2", id="a1", thread_id=asked)
    long = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(6))
    await bus.send(ada, long, id="a2")
    receipts = {r.outbound_id: r for r in await bus.wait_receipts(2)}
    assert all(r.ok for r in receipts.values()), receipts
    assert slack.texts(general, asked) == ["1 &lt; 2 &amp; 3 &gt; 2"]
    parts = slack.texts(slack.dm(ada))
    assert len(parts) == 2 and all(len(p) <= 4000 for p in parts)
    assert receipts["a2"].platform_message_id == f"{slack.dm(ada)}:{slack.bot_messages(slack.dm(ada))[-1]['ts']}"


async def test_a_card_press_becomes_an_action_and_the_decided_card_loses_its_buttons(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    card = ev.Card(
        title="Allow GitHub?",
        buttons=(
            ev.Button(id="approve", label="Approve", style="primary"),
            ev.Button(id="deny", label="Deny", style="danger"),
        ),
    )
    bridge.start()
    await bus.send(dm, "The agent asks:", id="approval:ap-1", card=card)
    [receipt] = await bus.wait_receipts(1)
    [message] = slack.bot_messages(dm)
    slack.click(dm, message["ts"], ada, button=1)
    await until(lambda: slack.unacked == 0, 10, "the interactive envelope was not acknowledged")

    async def action() -> list[ev.InboundAction]:
        return [e for e in await bus.inbound() if isinstance(e, ev.InboundAction)]

    deadline = time.monotonic() + 10
    while not (found := await action()):
        assert time.monotonic() < deadline, "no inbound action"
        await asyncio.sleep(0.1)
    assert (found[0].card_id, found[0].button_id, found[0].sender.id, found[0].message_id) == (
        "approval:ap-1",
        "deny",
        f"slack:{ada}",
        receipt.platform_message_id,
    )
    assert receipt.platform_message_id is not None
    await bus.publish(
        ev.OutboundEdit(
            id="e1",
            route=ev.Route(channel="slack", chat_id=dm),
            target_message_id=receipt.platform_message_id,
            text="Denied by ada",
        ),
        "e1",
    )
    await bus.wait_receipts(2)
    [decided] = slack.bot_messages(dm)
    assert decided["text"] == "Denied by ada" and decided["blocks"] == []


async def test_a_file_goes_up_through_an_upload_url_into_the_thread(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    asked = slack.say(dm, ada, "the chart please")
    outbox = bridge.home / "sessions" / "main" / "s1" / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "chart.csv").write_bytes(b"a,b\n1,2\n")
    bridge.start()
    await bus.send(dm, "", id="f1", files=(str(outbox / "chart.csv"),), thread_id=asked)
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok, receipt
    [shared] = [m for m in slack.bot_messages(dm) if m.get("files")]
    assert shared["thread_ts"] == asked and shared["files"][0]["name"] == "chart.csv"
    assert slack.uploaded[shared["files"][0]["id"]] == b"a,b\n1,2\n"


async def test_a_429_in_one_channel_holds_only_that_channel(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada, bea = slack.user("ada"), slack.user("bea")
    held, free = slack.dm(ada), slack.dm(bea)
    slack.inject("chat.postMessage", Error(429, "ratelimited", retry_after=4, channel=held))
    bridge.start()
    await bus.send(held, "for ada", id="h1")
    await until(lambda: any(c.outcome.startswith("fault 429") for c in slack.calls_to("chat.postMessage")), 10)
    started = time.monotonic()
    await bus.send(free, "for bea", id="f1")
    await until(lambda: slack.texts(free) == ["for bea"], 10)
    assert time.monotonic() - started < 2.0, "the other channel waited on the 429"
    assert slack.texts(held) == []
    await until(lambda: slack.texts(held) == ["for ada"], 15)
    faulted = next(c for c in slack.calls_to("chat.postMessage") if c.outcome.startswith("fault 429"))
    landed = next(
        c for c in slack.calls_to("chat.postMessage") if c.params.get("channel") == held and c.outcome == "ok"
    )
    assert landed.at - faulted.at >= 4.0, "Retry-After was not honoured"
    assert all(r.ok for r in await bus.wait_receipts(2))


async def test_a_5xx_and_a_dropped_answer_are_tried_again_and_the_message_lands_once(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    ada = slack.user("ada")
    dm = slack.dm(ada)
    slack.inject("chat.postMessage", Error(503), Drop())
    bridge.start()
    await bus.send(dm, "after two failures", id="r1")
    [receipt] = await bus.wait_receipts(1)
    assert receipt.ok and slack.texts(dm) == ["after two failures"]
    assert [c.outcome for c in slack.calls_to("chat.postMessage")] == ["fault 503 internal_error", "dropped", "ok"]


async def test_a_slack_outage_longer_than_the_send_deadline_is_waited_out_and_the_answer_lands(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge
) -> None:
    """Slack answering 503 for longer than `send_deadline`: it never refused the answer, so the answer waits for
    Slack instead of being reported failed."""
    ada = slack.user("ada")
    dm = slack.dm(ada)
    slack.inject("chat.postMessage", *[Error(503)] * 3)
    bridge.settings["send_deadline"] = "1"
    bridge.start()
    await bus.send(dm, "after the outage", id="o1")
    [receipt] = await bus.wait_receipts(1, timeout=30)
    assert receipt.ok and slack.texts(dm) == ["after the outage"]
    calls = slack.calls_to("chat.postMessage")
    assert [c.outcome for c in calls] == ["fault 503 internal_error"] * 3 + ["ok"]
    assert calls[-1].at - calls[0].at > 1, "the outage did not outlast the deadline"


# People's edits and deletes become edits and deletes of the message they were.


ME = Me(BOT_USER, "B0BOT", "T0TEAM")


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


async def test_tokens_slack_refuses_make_the_bridge_say_so_with_the_fix_until_slack_takes_them(
    slack: FakeSlack, bus: SlackBus, bridge: SlackBridge, nats_server: NatsServer
) -> None:
    """A revoked app-level token is not "cannot reach Slack": `clawden status` says Slack refuses the credentials, and
    how the owner mends them, from the first refusal until a connection is opened."""

    async def trouble() -> str:
        nc = await nats.connect(nats_server.url)
        try:
            return (await status.ask(nc, PING.at("channel-slack"), Nothing())).trouble
        finally:
            await nc.close()

    slack.inject("apps.connections.open", *[Error(200, "invalid_auth")] * 1000)
    ChannelProcess.start(bridge)  # READY, with no socket to wait for
    said = await eventually(trouble, 30, bridge.output)
    assert (
        said.startswith("Slack refuses the bridge's credentials since ")
        and "(apps.connections.open: invalid_auth)" in said
    )
    assert said.endswith("until they are mended: " + slack_bridge.SLACK_FIX)
    slack.heal("apps.connections.open")

    async def mended() -> bool:
        return await trouble() == ""

    await eventually(mended, 60, bridge.output)  # its next try opens the socket, and Slack says hello
