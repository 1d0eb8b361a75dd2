"""Delivery rules every bridge gets: parts sent once, lost answers never repeated unless the platform
dedupes, a handler that keeps crashing reported instead of retried forever."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden.bus import Retry, ensure_streams, sentlog, subjects
from clawden.bus import events as ev
from services.channels.bridge import BridgeStats, ButtonRef, Capabilities
from services.channels.delivery import POISON_AFTER, Delivery, TypingIndicators, plan
from services.channels.retry import PlatformError, RetryPolicy
from services.channels.service import follow_twins
from services.channels.state import BridgeState
from tests.channels.harness import Bus
from tests.channels.memory_bridge import MemoryBridge
from tests.eventually import eventually

ROUTE = ev.Route(channel="memory", chat_id="c1")


STREAM_SEQ = itertools.count(1)


@dataclass
class FakeMsg:
    """What Delivery reads from a JetStream message: how often it was delivered, its place in the stream."""

    num_delivered: int = 1
    seq: int = dataclasses.field(default_factory=lambda: next(STREAM_SEQ))

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(num_delivered=self.num_delivered, sequence=SimpleNamespace(stream=self.seq))

    async def in_progress(self) -> None:
        pass


def fake_msg(num_delivered: int = 1) -> Msg:
    """A JetStream message as far as Delivery reads one (each a later one in the stream)."""
    return cast("Msg", FakeMsg(num_delivered))


class Lost(PlatformError):
    after_posting = True

    def __init__(self) -> None:
        super().__init__("the answer was lost", "unknown")


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[BridgeState]:
    s = await BridgeState.open(tmp_path / "memory.db")
    yield s
    await s.close()


@pytest.fixture
async def bus(nc: Client) -> Bus:
    await ensure_streams(nc.jetstream())
    return Bus(nc)


def delivery_for(
    bridge: MemoryBridge,
    state: BridgeState,
    bus: Bus,
    tmp_path: Path,
    stopping: asyncio.Event | None = None,
    deadline: float = 5,
    ceiling: float = 60.0,
) -> Delivery:
    return Delivery(
        bridge,
        state,
        bus.js,
        BridgeStats(),
        TypingIndicators(bridge),
        stopping=stopping or asyncio.Event(),
        policy=RetryPolicy(first=0.05, ceiling=ceiling, deadline=deadline),
        typing_horizon=60,
        file_roots=(tmp_path,),
    )


async def receipts(bus: Bus) -> list[ev.DeliveryReceipt]:
    return [e for _, e in await bus.stored(subjects.receipt("memory"))]


def message(text: str, id: str = "o1", **extra: object) -> ev.OutboundMessage:
    return ev.OutboundMessage(id=id, route=ROUTE, text=text, **extra)  # type: ignore[arg-type]


def test_buttons_ride_on_the_last_part_and_the_reply_marker_on_the_first() -> None:
    card = ev.Card(title="Pick", buttons=(ev.Button(id="a", label="A"),))
    parts = plan(
        message("one two three four five six", reply_to="m9", card=card, files=("/x/f.png",)), 12, len, cards=True
    )
    assert [(p.text, p.reply_to, p.buttons, p.file) for p in parts] == [
        ("one two", "m9", False, ""),
        ("three four", None, False, ""),
        ("five six", None, False, ""),
        ("Pick", None, True, ""),
        ("", None, False, "/x/f.png"),
    ]


def test_a_card_whose_text_repeats_its_body_shows_the_body_once() -> None:
    card = ev.Card(title="Question", body="Which one?", buttons=(ev.Button(id="1", label="A"),))
    [part] = plan(message("Which one?", card=card), 100, len, cards=True)
    assert part.text == "Question\n\nWhich one?"


def test_a_platform_without_buttons_gets_the_choices_numbered_in_the_text() -> None:
    card = ev.Card(title="Pick", buttons=(ev.Button(id="a", label="Yes"), ev.Button(id="b", label="No")))
    [part] = plan(message("", card=card), 100, len, cards=False)
    assert part.text == "Pick\n\n1) Yes\n2) No" and not part.buttons


async def test_a_redelivered_message_sends_only_the_parts_not_yet_sent(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    bridge = MemoryBridge()
    await state.mark("o1", 0, "sent", "p-earlier")
    await delivery_for(bridge, state, bus, tmp_path).handle(message("first part\n\nsecond part"), fake_msg(2))
    assert bridge.posted == [("c1", "second part")]
    [receipt] = await receipts(bus)
    assert receipt.ok and receipt.part_ids == ("p-earlier", "p1")


async def test_a_lost_answer_is_not_repeated_on_a_platform_that_does_not_dedupe(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    bridge = MemoryBridge()
    bridge.failures.append(Lost())
    await delivery_for(bridge, state, bus, tmp_path).handle(message("hello"), fake_msg())
    assert bridge.posted == [("c1", "hello")] and bridge.calls == 1
    [receipt] = await receipts(bus)
    assert receipt.unconfirmed and not receipt.ok
    # and a redelivery (the ack was lost) does not send it either
    await delivery_for(bridge, state, bus, tmp_path).handle(message("hello"), fake_msg(2))
    assert bridge.calls == 1


async def test_a_lost_answer_is_repeated_where_the_platform_dedupes_repeats(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    bridge = MemoryBridge(Capabilities(max_text=20, idempotent_sends=True, dedupe_window=60))
    bridge.failures.append(PlatformError("the answer was lost", "unknown"))
    await delivery_for(bridge, state, bus, tmp_path).handle(message("hello"), fake_msg())
    assert bridge.keys == ["o1#0", "o1#0"]  # the same key both times: the platform drops the repeat
    [receipt] = await receipts(bus)
    assert receipt.ok and not receipt.unconfirmed


async def test_a_rate_limit_during_shutdown_hands_the_message_back_with_the_wait_left(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    bridge = MemoryBridge()
    bridge.failures.append(PlatformError("Too Many Requests", "rate_limited", retry_after=30))
    stopping = asyncio.Event()
    delivery = delivery_for(bridge, state, bus, tmp_path, stopping, deadline=600)
    handling = asyncio.create_task(delivery.handle(message("hi"), fake_msg()))
    await asyncio.sleep(0.2)
    stopping.set()
    with pytest.raises(Retry) as retry:
        await asyncio.wait_for(handling, 5)
    assert 29 < retry.value.delay <= 30.1
    assert await state.sends("o1") == {}  # not sent: the next process sends it normally


async def test_a_handler_that_keeps_crashing_is_reported_as_failed_instead_of_retried_forever(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    def broken_measure(text: str) -> int:
        raise TypeError("a bug in the bridge")

    bridge = MemoryBridge(Capabilities(max_text=20, measure=broken_measure))
    delivery = delivery_for(bridge, state, bus, tmp_path)
    with pytest.raises(TypeError):
        await delivery.handle(message("hi", seq=3, session_id="s"), fake_msg(1))
    await delivery.handle(message("hi", seq=3, session_id="s"), fake_msg(5))
    [receipt] = await receipts(bus)
    assert not receipt.ok and receipt.final and receipt.seq == 3
    assert receipt.error == "the memory bridge could not handle this (TypeError); its log has the details"
    assert bridge.posted == []


async def test_a_message_with_nothing_to_send_is_reported_not_dropped(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    await delivery_for(MemoryBridge(), state, bus, tmp_path).handle(message("   "), fake_msg())
    [receipt] = await receipts(bus)
    assert not receipt.ok and receipt.error == "nothing to send: the message has no text and no files"


class Typist(MemoryBridge):
    """A platform that shows "typing…" for a moment: the renewals are counted as the platform sees them."""

    def __init__(self) -> None:
        super().__init__(Capabilities(max_text=20, typing=True, typing_interval=0.01))
        self.typed = 0

    async def typing(self, route: ev.Route) -> None:
        self.typed += 1


async def test_typing_is_renewed_while_the_agent_works_and_ends_with_the_answer(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    bridge = Typist()
    delivery = delivery_for(bridge, state, bus, tmp_path)
    await delivery.handle(ev.Typing(id="t1", route=ROUTE, at=time.time()), fake_msg())
    await eventually(lambda: bridge.typed >= 3, message="typing was not renewed")
    [renewing] = delivery.typing.tasks.values()
    await delivery.handle(message("done"), fake_msg())
    # The platform clears "typing…" when the bot posts: the renewals stopped before the answer went out.
    assert delivery.typing.tasks == {}
    await asyncio.gather(renewing, return_exceptions=True)
    assert renewing.cancelled()
    assert bridge.posted == [("c1", "done")]


async def test_a_twin_that_posts_the_answer_ends_typing_on_the_instance_that_showed_it(
    state: BridgeState, other: BridgeState, bus: Bus, nc: Client, tmp_path: Path
) -> None:
    # Two instances share the lanes: the hint went to one, the answer to the other. The platform clears
    # "typing…" when the bot posts, so the first renewing it after the answer would bring it back.
    showing, posting = Typist(), Typist()
    first, second = delivery_for(showing, state, bus, tmp_path), delivery_for(posting, other, bus, tmp_path)
    for delivery in (first, second):
        delivery.typing.announce = lambda notice: nc.publish(subjects.typing_off("memory"), ev.encode(notice))
        await follow_twins(nc, "memory", delivery.typing)
    hint, answer = fake_msg(), fake_msg()
    await first.handle(ev.Typing(id="t1", route=ROUTE, at=time.time()), hint)
    await eventually(lambda: showing.typed >= 2, message="typing was not renewed")
    [renewing] = first.typing.tasks.values()

    await second.handle(message("done"), answer)
    await asyncio.gather(renewing, return_exceptions=True)  # ends on the twin's notice, well before its horizon
    assert renewing.cancelled() and first.typing.tasks == {}
    assert posting.posted == [("c1", "done")]


async def test_a_twins_notice_ends_only_typing_an_earlier_hint_started(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    # The chat's next hint, taken here after the twin posted, shows "typing…" again: a late notice of the
    # earlier answer does not end it; a malformed one, or one for another chat, ends nothing.
    bridge = Typist()
    delivery = delivery_for(bridge, state, bus, tmp_path)
    answered, hint = fake_msg(), fake_msg()
    await delivery.handle(ev.Typing(id="t2", route=ROUTE, at=time.time()), hint)
    delivery.typing.off(ev.TypingOff(route=ROUTE, seq=cast("FakeMsg", answered).seq))
    delivery.typing.off(ev.TypingOff(route=ev.Route(channel="memory", chat_id="c2"), seq=10**9))
    assert list(delivery.typing.tasks) == [("c1", None)]
    delivery.typing.off(ev.TypingOff(route=ROUTE, seq=cast("FakeMsg", hint).seq + 1))
    assert delivery.typing.tasks == {}


async def test_a_malformed_typing_off_notice_is_said_once_and_ends_nothing(
    state: BridgeState, bus: Bus, nc: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = delivery_for(Typist(), state, bus, tmp_path)
    await follow_twins(nc, "memory", delivery.typing)
    await delivery.handle(ev.Typing(id="t3", route=ROUTE, at=time.time()), fake_msg())
    await nc.publish(subjects.typing_off("memory"), b'{"type": "bridge.typing_off", "route": 5}')
    said = lambda: [r.getMessage() for r in caplog.records if "typing-off" in r.getMessage()]  # noqa: E731
    await eventually(said, message="the malformed notice was not said")
    assert said() == ["memory: ignored a malformed typing-off notice (Expected `object`, got `int` - at `$.route`)"]
    assert list(delivery.typing.tasks) == [("c1", None)]


# --- two instances of one bridge: the shared sent-log ------------------------------------------------


@pytest.fixture
async def other(tmp_path: Path) -> AsyncIterator[BridgeState]:
    """The own state of a second instance of the bridge (another host)."""
    s = await BridgeState.open(tmp_path / "other" / "memory.db")
    yield s
    await s.close()


class PostsThenHangs(MemoryBridge):
    """A platform that takes the message and never answers: the instance is killed before it learns."""

    def __init__(self) -> None:
        super().__init__()
        self.took = asyncio.Event()

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        self.calls += 1
        self.keys.append(key)
        self.posted.append((route.chat_id, text))
        self.took.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def killed_mid_send(delivery: Delivery, bridge: PostsThenHangs, event: ev.OutboundMessage) -> None:
    """The instance takes the message and is killed once the platform has it, before it answers."""
    handling = asyncio.create_task(delivery.handle(event, fake_msg()))
    await asyncio.wait_for(bridge.took.wait(), 5)
    handling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handling


async def test_a_message_another_instance_sent_is_skipped_there_and_its_ids_known_here(
    state: BridgeState, other: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    first, second = MemoryBridge(), MemoryBridge()
    event = message("first part\n\nsecond part")
    await delivery_for(first, state, bus, tmp_path).handle(event, fake_msg())
    # Its ack was lost: the redelivery goes to the other instance.
    await delivery_for(second, other, bus, tmp_path).handle(event, fake_msg(2))
    assert first.posted == [("c1", "first part"), ("c1", "second part")] and second.posted == []
    receipts_ = await receipts(bus)
    assert [(r.ok, r.part_ids) for r in receipts_] == [(True, ("p1", "p2"))]  # the same receipt: deduped
    # The second instance's own log now knows the parts, so an edit it is handed finds the whole message.
    found = await other.message_of("p2")
    assert found is not None and [(s.state, s.platform_id, s.kind) for s in found[1].values()] == [
        ("sent", "p1", "text"),
        ("sent", "p2", "text"),
    ]


class Editable(MemoryBridge):
    """A platform whose posts the bot may edit and delete, as the chat shows them (platform id -> text)."""

    def __init__(self, shown: dict[str, str]) -> None:
        super().__init__(Capabilities(max_text=20, edits=True))
        self.shown = shown

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        pid = f"p{len(self.shown) + 1}"
        self.shown[pid] = text
        return pid

    async def edit(self, route: ev.Route, target: str, text: str, buttons: list[list[ButtonRef]]) -> None:
        if target not in self.shown:
            raise PlatformError("message to edit not found", "permanent")
        self.shown[target] = text

    async def delete(self, route: ev.Route, target: str) -> None:
        self.shown.pop(target, None)


async def test_an_edit_handed_to_the_instance_that_did_not_send_the_message_refills_all_its_parts(
    state: BridgeState, other: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    # One chat, two instances: the first sends a message in three parts, the edits go to the other, then back.
    shown: dict[str, str] = {}
    first, second = (
        delivery_for(Editable(shown), state, bus, tmp_path),
        delivery_for(Editable(shown), other, bus, tmp_path),
    )
    await first.handle(message("one one one\n\ntwo two two\n\nthree three", id="s:7"), fake_msg())
    assert shown == {"p1": "one one one", "p2": "two two two", "p3": "three three"}

    def edit(text: str, n: int) -> ev.OutboundEdit:
        return ev.OutboundEdit(id=f"s:e{n}", route=ROUTE, target_message_id="p3", text=text, target_outbound_id="s:7")

    await second.handle(edit("uno uno uno uno\n\ndos dos dos dos", 1), fake_msg())
    assert shown == {"p1": "uno uno uno uno", "p2": "dos dos dos dos"}  # not only the part the edit names
    # Back on the first: the third part is gone, whoever took it away; the text is cut at the last part left.
    await first.handle(edit("eins eins eins\n\nzwei zwei zwei\n\ndrei drei drei", 2), fake_msg())
    assert shown.keys() == {"p1", "p2"} and shown["p1"] == "eins eins eins" and shown["p2"].startswith("zwei zwei")
    assert [(r.ok, r.error) for r in await receipts(bus) if r.outbound_id.startswith("s:e")] == [(True, None)] * 2


async def test_a_part_the_shared_log_missed_as_sent_is_still_refilled_by_the_instance_that_sent_it(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    shown: dict[str, str] = {}
    delivery = delivery_for(Editable(shown), state, bus, tmp_path)
    await delivery.handle(message("one one one\n\ntwo two two", id="s:5"), fake_msg())
    # The bus did not take this instance's 'sent' of the second part: the shared log still says 'sending'.
    await sentlog.SentLog(bus.js, "memory", "elsewhere").record("s:5", 1, "sending", kind="text")
    edit = ev.OutboundEdit(id="s:e5", route=ROUTE, target_message_id="p1", text="uno uno uno\n\ndos dos dos")
    await delivery.handle(msgspec.structs.replace(edit, target_outbound_id="s:5"), fake_msg())
    assert shown == {"p1": "uno uno uno", "p2": "dos dos dos"}


async def test_an_edit_naming_a_message_that_does_not_hold_its_target_edits_the_target_alone(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    # The outbound id comes from a row the agent wrote: it cannot make an edit reach another message's parts.
    shown: dict[str, str] = {}
    delivery = delivery_for(Editable(shown), state, bus, tmp_path)
    await delivery.handle(message("mine mine mine\n\nmore of mine", id="s:1"), fake_msg())
    await delivery.handle(message("other words", id="s:3"), fake_msg())
    forged = ev.OutboundEdit(id="s:e", route=ROUTE, target_message_id="p3", text="changed", target_outbound_id="s:1")
    await delivery.handle(forged, fake_msg())
    assert shown == {"p1": "mine mine mine", "p2": "more of mine", "p3": "changed"}


async def test_a_part_in_flight_on_an_instance_killed_mid_send_is_unconfirmed_on_the_other_not_posted_twice(
    state: BridgeState, other: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    first, second = PostsThenHangs(), MemoryBridge()
    await killed_mid_send(delivery_for(first, state, bus, tmp_path), first, message("hello"))
    await delivery_for(second, other, bus, tmp_path).handle(message("hello"), fake_msg(2))
    assert first.posted == [("c1", "hello")] and second.calls == 0
    [receipt] = await receipts(bus)
    assert receipt.unconfirmed and not receipt.ok
    assert (await other.sends("o1"))[0].state == "unconfirmed"


async def test_a_part_in_flight_on_a_killed_instance_goes_again_where_the_platform_drops_repeats(
    state: BridgeState, other: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    first, second = PostsThenHangs(), MemoryBridge(Capabilities(max_text=20, idempotent_sends=True, dedupe_window=60))
    await killed_mid_send(delivery_for(first, state, bus, tmp_path), first, message("hello"))
    await delivery_for(second, other, bus, tmp_path).handle(message("hello"), fake_msg(2))
    assert first.keys == second.keys == ["o1#0"]  # the same key: the platform keeps one
    [receipt] = await receipts(bus)
    assert receipt.ok


async def test_a_part_an_instance_left_unsent_when_it_stopped_is_sent_by_the_other(
    state: BridgeState, other: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    first, second = MemoryBridge(), MemoryBridge()
    first.failures.append(PlatformError("Too Many Requests", "rate_limited", retry_after=30))
    stopping = asyncio.Event()
    handling = asyncio.create_task(
        delivery_for(first, state, bus, tmp_path, stopping, deadline=600).handle(message("hi"), fake_msg())
    )
    await eventually(lambda: first.calls == 1, message="the first instance never tried")
    stopping.set()
    with pytest.raises(Retry):
        await asyncio.wait_for(handling, 5)
    await delivery_for(second, other, bus, tmp_path).handle(message("hi"), fake_msg(2))
    assert first.posted == [] and second.posted == [("c1", "hi")]
    assert [r.ok for r in await receipts(bus) if r.final] == [True]


async def test_a_part_that_failed_on_one_instance_is_reported_failed_by_the_other_not_tried_again(
    state: BridgeState, other: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    first, second = MemoryBridge(), MemoryBridge()
    first.failures.append(PlatformError("Bad Request: chat not found", "permanent"))
    await delivery_for(first, state, bus, tmp_path).handle(message("hi"), fake_msg())
    await delivery_for(second, other, bus, tmp_path).handle(message("hi", id="o1"), fake_msg(2))
    assert second.calls == 0
    [receipt] = await receipts(bus)
    assert not receipt.ok and receipt.error == "Bad Request: chat not found"
    assert (await other.sends("o1"))[0].error == "Bad Request: chat not found"


async def test_nothing_is_sent_while_the_shared_sent_log_cannot_record_it(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    await bus.js.delete_stream("CLAWDEN_SENT")  # its stream gone: no claim can be stored
    bridge = MemoryBridge()
    with pytest.raises(Retry) as retry:
        await delivery_for(bridge, state, bus, tmp_path).handle(message("hi"), fake_msg(3))
    assert bridge.calls == 0 and await state.sends("o1") == {}
    assert retry.value.delay == 4.0  # backed off like any bus failure, not counted as the bridge crashing
    assert await receipts(bus) == []


async def test_giving_up_after_answers_were_lost_reports_the_message_unconfirmed_not_failed(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    """Where the platform dedupes repeats, a lost answer is tried again; when the tries run out, the platform may
    well show the message, so the receipt says so (an agent told "failed" would send it again)."""
    bridge = MemoryBridge(Capabilities(max_text=20, idempotent_sends=True, dedupe_window=60))
    bridge.failures.extend(Lost() for _ in range(1000))
    await delivery_for(bridge, state, bus, tmp_path, deadline=0.3).handle(message("hello"), fake_msg())
    assert bridge.calls > 1
    [receipt] = await receipts(bus)
    assert receipt.unconfirmed and not receipt.ok


async def test_an_outage_longer_than_the_deadline_is_waited_out_and_the_message_goes(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    """Requests that never left (connection refused) and 5xx answers, for five times the deadline and more: the
    platform never refused the message, so it goes once the platform is back, and no final failure is reported."""
    bridge = MemoryBridge()
    unreachable = PlatformError("cannot reach the platform (ConnectError)", "transient", connection=True)
    unavailable = PlatformError("HTTP 503", "transient", code=503)
    bridge.failures.extend([unreachable, unavailable] * 15)
    started = time.monotonic()
    await delivery_for(bridge, state, bus, tmp_path, deadline=0.3, ceiling=0.1).handle(message("hello"), fake_msg())
    assert time.monotonic() - started > 5 * 0.3, "the outage did not outlast the deadline"
    assert bridge.calls == 31 and bridge.posted == [("c1", "hello")]
    assert [(r.ok, r.final) for r in await receipts(bus)] == [(True, True)]


async def test_a_refusal_an_operator_can_fix_is_tried_only_until_the_deadline(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    """A revoked token (a transient 401) may never pass by itself: after the deadline the agent is told."""
    bridge = MemoryBridge()
    bridge.failures.extend(PlatformError("invalid_auth", "transient", code=401) for _ in range(1000))
    await delivery_for(bridge, state, bus, tmp_path, deadline=0.3, ceiling=0.1).handle(message("hello"), fake_msg())
    [receipt] = await receipts(bus)
    assert not receipt.ok and receipt.final and not receipt.unconfirmed
    assert (receipt.error or "").startswith("gave up after") and "invalid_auth" in (receipt.error or "")


async def test_a_part_first_tried_longer_ago_than_the_platform_drops_repeats_is_not_sent_again(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    """A bridge that died mid-send and comes back an hour later: Discord drops a repeated nonce only for a few
    minutes, so sending again could post a second copy; it is reported unconfirmed instead."""
    bridge = MemoryBridge(Capabilities(max_text=20, idempotent_sends=True, dedupe_window=60))
    await state.mark("o1", 0, "sending", kind="text")
    await state.db.execute("UPDATE sends SET tried_at = tried_at - 3600")
    await state.db.commit()
    await delivery_for(bridge, state, bus, tmp_path).handle(message("hello"), fake_msg(2))
    assert bridge.calls == 0
    [receipt] = await receipts(bus)
    assert receipt.unconfirmed and not receipt.ok


async def test_lost_answers_are_tried_again_only_while_the_platform_drops_repeats(
    state: BridgeState, bus: Bus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = MemoryBridge(Capabilities(max_text=20, idempotent_sends=True, dedupe_window=0.3))
    bridge.failures.extend(Lost() for _ in range(1000))
    with caplog.at_level(logging.WARNING):
        await delivery_for(bridge, state, bus, tmp_path, deadline=600).handle(message("hello"), fake_msg())
    [receipt] = await receipts(bus)
    assert receipt.unconfirmed and not receipt.ok and bridge.calls > 1
    assert "the platform drops a repeat only for a while after the first" in caplog.text


class ReceiptsAway:
    """JetStream, but the next `away` receipt publishes time out (NATS away for a moment)."""

    def __init__(self, js: Any, away: int) -> None:
        self.js, self.away = js, away

    def __getattr__(self, name: str) -> Any:
        return getattr(self.js, name)

    async def publish(self, subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject == subjects.receipt("memory") and self.away:
            self.away -= 1
            raise nats.errors.TimeoutError
        return await self.js.publish(subject, *args, **kwargs)


async def test_a_receipt_nats_did_not_take_is_waited_out_never_reported_as_a_failure_to_handle(
    state: BridgeState, bus: Bus, tmp_path: Path
) -> None:
    """On a late delivery (past the crash count), a receipt publish that fails must not turn into "could not
    handle this" under the same receipt id, which would win over the real one for a message that went out."""
    bridge = MemoryBridge()
    delivery = delivery_for(bridge, state, bus, tmp_path)
    delivery.js = ReceiptsAway(bus.js, away=1)  # type: ignore[assignment]
    with pytest.raises(Retry):
        await delivery.handle(message("hello"), fake_msg(POISON_AFTER))
    await delivery.handle(message("hello"), fake_msg(POISON_AFTER))  # the held Retry runs it again
    assert bridge.posted == [("c1", "hello")]
    [receipt] = await receipts(bus)
    assert receipt.ok and receipt.part_ids == ("p1",)
