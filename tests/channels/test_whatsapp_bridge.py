"""The WhatsApp bridge process between the real front door and the fake Graph API, over real NATS: what a
person sends reaches the bus once, what the agent says reaches the person, and WhatsApp's own rules
(the 24-hour window, rate limits, status callbacks) come back to the agent as receipts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from clawden.bus import events as ev
from clawden.bus import publish, subjects
from tests.channels.whatsapp_harness import WhatsApp, WhatsAppProcess, whatsapp
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.fakes.telegram import png
from tests.fakes.whatsapp import PHONE_NUMBER_ID, GraphError, SentMessage

pytestmark = pytest.mark.process
ADA = "447700900123"


@pytest.fixture
async def wa(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[WhatsApp]:
    async with whatsapp(tmp_path, nats_server.url) as running:
        yield running


async def receipt_for(wa: WhatsApp, outbound_id: str, count: int = 1) -> list[ev.DeliveryReceipt]:
    async def found() -> list[ev.DeliveryReceipt] | None:
        mine = [r for r in await wa.bus.receipts() if r.outbound_id == outbound_id and r.final]
        return mine if len(mine) >= count else None

    return await eventually(found, timeout=30, message=wa.bridge.output)


async def heard(wa: WhatsApp, text: str) -> str:
    """The person writes, and the bridge has read it (so it knows their 24-hour window is open): its wamid."""
    wamid, status = await wa.graph.user_writes(ADA, text)
    assert status == 200

    async def on_the_bus() -> bool:
        return any(e.message_id == wamid for e in await wa.bus.inbound())

    await eventually(on_the_bus, timeout=30, message=wa.bridge.output)
    return wamid


async def took_every_delivery(wa: WhatsApp) -> bool:
    """The bridge has handled (and acked) everything the front door stored for it."""
    info = await wa.bus.js.consumer_info("CLAWDEN_WEBHOOKS", "channel-whatsapp-webhooks")
    return (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_message_reaches_the_bus_once_and_the_answer_goes_back_as_a_reply_split_at_4096(wa: WhatsApp) -> None:
    wamid, status = await wa.graph.user_writes(ADA, "hello there", name="Ada")
    assert status == 200
    # Meta's retry of the same message in another batch: a new body, the same WhatsApp message id.
    sender = wa.door.sender()
    assert (await sender.post(sender.text(ADA, "hello there", name="Ada", msg_id=wamid))).status_code == 200
    [message] = await eventually(wa.bus.inbound, timeout=30, message=wa.bridge.output)
    assert (message.message_id, message.text, message.sender.id, message.sender.name) == (
        wamid,
        "hello there",
        ADA,
        "Ada",
    )
    assert message.route.chat_id == ADA
    await wa.bus.send_to(ADA, "a" * 4096 + "b" * 10, id="out-1", reply_to=wamid, session_id="s1", seq=3)
    [receipt] = await receipt_for(wa, "out-1")
    assert receipt.ok, receipt
    sent = wa.graph.to(ADA)
    assert [len(m.text) for m in sent] == [4096, 10]
    assert sent[0].payload["context"] == {"message_id": wamid}
    assert receipt.platform_message_id == sent[-1].wamid
    await eventually(lambda: took_every_delivery(wa), timeout=30, message=wa.bridge.output)
    assert len(await wa.bus.inbound()) == 1  # the retry in another batch was read, and not published again


async def test_a_card_becomes_reply_buttons_and_a_press_becomes_its_click(wa: WhatsApp) -> None:
    await heard(wa, "may I?")
    card = ev.Card(
        title="Allow?",
        body="Let the agent read your calendar?",
        buttons=(ev.Button(id="yes", label="Allow"), ev.Button(id="no", label="Deny")),
    )
    await wa.bus.send_to(ADA, card.body, id="card-1", card=card)
    await receipt_for(wa, "card-1")
    [shown] = wa.graph.to(ADA)
    assert shown.type == "interactive" and shown.payload["interactive"]["type"] == "button"
    assert [b["reply"]["title"] for b in shown.payload["interactive"]["action"]["buttons"]] == ["Allow", "Deny"]
    await wa.graph.user_presses(ADA, shown, 1)

    async def click() -> ev.InboundAction | None:
        return next((e for e in await wa.bus.inbound() if isinstance(e, ev.InboundAction)), None)

    action = await eventually(click, timeout=30, message=wa.bridge.output)
    assert (action.card_id, action.button_id, action.sender.id, action.message_id) == ("card-1", "no", ADA, shown.wamid)


async def test_a_card_with_more_buttons_than_three_becomes_a_list(wa: WhatsApp) -> None:
    await heard(wa, "options?")
    card = ev.Card(
        title="Pick", body="Which one?", buttons=tuple(ev.Button(id=f"b{i}", label=f"Choice {i}") for i in range(5))
    )
    await wa.bus.send_to(ADA, card.body, id="card-2", card=card)
    await receipt_for(wa, "card-2")
    [shown] = wa.graph.to(ADA)
    assert shown.payload["interactive"]["type"] == "list"
    await wa.graph.user_presses(ADA, shown, 4)

    async def click() -> ev.InboundAction | None:
        return next((e for e in await wa.bus.inbound() if isinstance(e, ev.InboundAction)), None)

    assert (await eventually(click, timeout=30, message=wa.bridge.output)).button_id == "b4"


async def test_an_image_is_fetched_with_the_token_and_a_file_is_uploaded_then_sent(wa: WhatsApp) -> None:
    picture = png(4, 3)
    await wa.graph.user_sends_image(ADA, picture, caption="look")

    async def with_file() -> ev.InboundMessage | None:
        return next((e for e in await wa.bus.inbound() if isinstance(e, ev.InboundMessage) and e.attachments), None)

    message = await eventually(with_file, timeout=30, message=wa.bridge.output)
    [attachment] = message.attachments
    assert message.text == "look" and attachment.mime == "image/png"
    assert Path(urlsplit(attachment.url).path).read_bytes() == picture  # noqa: ASYNC240 - a test's small read
    report = wa.home / "sessions" / "main" / "s1" / "outbox" / "report.pdf"
    report.parent.mkdir(parents=True)
    report.write_bytes(b"%PDF-1.4 fake report")
    await wa.bus.send_to(ADA, "", id="file-1", files=(str(report),))
    [receipt] = await receipt_for(wa, "file-1")
    assert receipt.ok, receipt
    [sent] = wa.graph.to(ADA)
    assert sent.type == "document" and sent.payload["document"]["filename"] == "report.pdf"
    assert wa.graph.media[sent.payload["document"]["id"]][0] == b"%PDF-1.4 fake report"


async def test_status_callbacks_become_receipts_a_failure_with_its_reason(wa: WhatsApp) -> None:
    await heard(wa, "hi")
    await wa.bus.send_to(ADA, "first", id="out-r", session_id="s1", seq=5)
    await wa.bus.send_to(ADA, "second", id="out-f", session_id="s1", seq=7)
    await receipt_for(wa, "out-f")
    first, second = wa.graph.to(ADA)
    assert await wa.graph.status(first, "read") == 200
    assert await wa.graph.status(second, "failed", errors=[{"code": 131026, "title": "Message undeliverable"}]) == 200
    receipts = [r for r in await receipt_for(wa, "out-r", 2) if r.platform_message_id == first.wamid and r.seq == 5]
    # The send's own receipt says delivered (Graph took it); Meta's read status says read.
    assert sorted((r.ok, r.state) for r in receipts) == [(True, "delivered"), (True, "read")]
    failed = [r for r in await receipt_for(wa, "out-f", 2) if not r.ok]
    assert [(r.session_id, r.seq) for r in failed] == [("s1", 7)]
    assert "Message undeliverable (131026)" in (failed[0].error or "")


async def test_outside_the_24_hour_window_a_message_is_refused_with_the_reason(wa: WhatsApp) -> None:
    await wa.bus.send_to("447700900999", "are you there?", id="cold-1", session_id="s2", seq=1)
    [receipt] = await receipt_for(wa, "cold-1")
    assert not receipt.ok
    assert "within 24 hours" in (receipt.error or "") and "template" in (receipt.error or "")
    assert wa.graph.to("447700900999") == [] and wa.graph.undelivered == []


async def test_a_throughput_limit_is_waited_out_and_the_message_sent_once(wa: WhatsApp) -> None:
    await heard(wa, "hi")
    wa.graph.inject("messages", GraphError(429, 130429, "Rate limit hit", retry_after=1), GraphError(500, 131000))
    await wa.bus.send_to(ADA, "after the limit", id="out-429")
    [receipt] = await receipt_for(wa, "out-429")
    assert receipt.ok
    assert [m.text for m in wa.graph.to(ADA)] == ["after the limit"]


async def test_what_arrives_while_the_bridge_is_down_waits_in_jetstream_for_it(wa: WhatsApp) -> None:
    assert wa.bridge.stop() == 0
    wamid, status = await wa.graph.user_writes(ADA, "are you there?")
    assert status == 200  # the door stored it: Meta will not retry, so the stream must keep it
    wa.bridge.start()
    [message] = await eventually(wa.bus.inbound, timeout=30, message=wa.bridge.output)
    assert (message.message_id, message.text) == (wamid, "are you there?")


async def test_doctor_checks_the_token_against_the_phone_number_id(wa: WhatsApp) -> None:
    from clawden import config
    from clawden.cli import doctor

    env = {
        "CLAWDEN_WHATSAPP_TOKEN": wa.graph.token,
        "CLAWDEN_WHATSAPP_GRAPH_URL": f"{wa.graph.url}/v21.0",
        "CLAWDEN_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
    }
    cfg = config.load(wa.home, env)
    good = await doctor.channel_check("whatsapp")(doctor.Probe(cfg, env))
    assert good.status == "ok" and "Clawden Test" in good.detail
    bad = await doctor.channel_check("whatsapp")(doctor.Probe(cfg, {**env, "CLAWDEN_WHATSAPP_TOKEN": "EAAwrong"}))
    assert bad.status == "FAIL" and "rejected the token" in bad.detail


async def test_a_reaction_goes_both_ways(wa: WhatsApp) -> None:
    wamid = await heard(wa, "good news")
    reaction = ev.OutboundReaction(
        id="react-1", route=ev.Route(channel="whatsapp", chat_id=ADA), target_message_id=wamid, emoji="👍"
    )
    await publish(wa.bus.js, subjects.outbound("whatsapp", ADA), reaction, msg_id=reaction.id)
    await receipt_for(wa, "react-1")
    [sent] = wa.graph.to(ADA)
    assert sent.payload["reaction"] == {"message_id": wamid, "emoji": "👍"}
    assert wa.graph.sender is not None
    body = wa.graph.sender.text(ADA, "")
    message = body["entry"][0]["changes"][0]["value"]["messages"][0]
    message.update(type="reaction", reaction={"message_id": sent.wamid, "emoji": "❤️"})
    del message["text"]
    await wa.graph.user_writes(ADA, payload=body)

    async def reacted() -> ev.InboundMessage | None:
        return next((e for e in await wa.bus.inbound() if e.message_id == message["id"]), None)

    assert (await eventually(reacted, timeout=30, message=wa.bridge.output)).text == (
        f"[reacted ❤️ to message {sent.wamid}]"
    )


async def test_outside_the_window_the_configured_template_invites_a_reply(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with whatsapp(tmp_path, nats_server.url, template="hello_again") as wa:
        await wa.bus.send_to("447700900998", "your report is ready", id="cold-2")
        [receipt] = await receipt_for(wa, "cold-2")
        assert not receipt.ok and "the template 'hello_again' was sent" in (receipt.error or "")
        [sent] = wa.graph.to("447700900998")
        assert sent.type == "template" and sent.payload["template"]["name"] == "hello_again"


async def test_status_callbacks_out_of_order_give_one_receipt_each_and_no_failure(wa: WhatsApp) -> None:
    await heard(wa, "hi")
    await wa.bus.send_to(ADA, "hello", id="out-o", session_id="s1", seq=9)
    await receipt_for(wa, "out-o")
    [sent] = wa.graph.to(ADA)
    assert wa.graph.sender is not None
    for status in ("read", "delivered", "sent"):  # Meta sends them as they come
        assert await wa.graph.status(sent, status) == 200
    # ... and again, in another batch (another body, so the front door stores it too).
    assert (await wa.graph.sender.post(wa.graph.sender.status(sent.wamid, ADA, "read", at=1))).status_code == 200
    # The bridge reads the stream in order: once this later message is on the bus, every status was handled.
    marker, _ = await wa.graph.user_writes(ADA, "marker")

    async def handled() -> bool:
        return any(e.message_id == marker for e in await wa.bus.inbound())

    await eventually(handled, timeout=30, message=wa.bridge.output)
    receipts = [r for r in await wa.bus.receipts() if r.outbound_id == "out-o"]
    assert sorted(r.platform_message_id == sent.wamid for r in receipts) == [True, True, True]  # send, delivered, read
    assert all(r.ok and r.seq == 9 for r in receipts)
    assert sorted(r.state for r in receipts) == ["delivered", "delivered", "read"]  # the read one said so once


async def test_a_failed_status_that_comes_before_graphs_answer_still_reaches_the_agent(wa: WhatsApp) -> None:
    await heard(wa, "hi")
    wa.graph.age_window(ADA, 30)  # Meta's record: Ada last wrote 30 hours ago, so it fails the send (131047)
    here = asyncio.get_running_loop()

    async def bridge_took_the_status() -> None:
        async def took() -> bool:  # handled (and acked) it, or is holding it for the send in flight
            return await took_every_delivery(wa) or "waits for the sends" in wa.bridge.output()

        await eventually(took, timeout=30, message=wa.bridge.output)

    # Meta's "failed" webhook is stored and taken by the bridge before the bridge hears the send's answer.
    wa.graph.before_answer = lambda: asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(bridge_took_the_status(), here)
    )
    await wa.bus.send_to(ADA, "too late", id="out-late", session_id="s1", seq=11)
    failed = [r for r in await receipt_for(wa, "out-late", 2) if not r.ok]
    [late] = wa.graph.undelivered
    assert [(r.session_id, r.seq, r.platform_message_id) for r in failed] == [("s1", 11, late.wamid)]
    assert "Re-engagement message (131047)" in (failed[0].error or "")


async def test_a_twin_answers_in_the_window_the_other_heard_open_and_each_tells_the_others_statuses(
    wa: WhatsApp, tmp_path: Path, nats_server: NatsServer
) -> None:
    # Two instances share the webhook durable and the lanes (on two hosts): the person's message went to one,
    # the answer to the other, and a status for the answer comes back to the first.
    await heard(wa, "hi")
    assert wa.bridge.stop() == 0
    twin = WhatsAppProcess(tmp_path / "host-b", nats_server.url, wa.graph).start()
    try:
        await wa.bus.send_to(ADA, "from the twin", id="twin-1", session_id="s1", seq=3)
        [receipt] = await receipt_for(wa, "twin-1")
        assert receipt.ok, receipt.error  # the twin never heard the person: it asked what the other heard
        [sent] = wa.graph.to(ADA)
        assert twin.stop() == 0
        wa.bridge.start()
        assert await wa.graph.status(sent, "read") == 200
        read = [r for r in await receipt_for(wa, "twin-1", 2) if r.state == "read"]
        assert [(r.ok, r.session_id, r.seq, r.platform_message_id) for r in read] == [(True, "s1", 3, sent.wamid)]
    finally:
        twin.close()


async def test_a_status_taken_before_the_twin_noted_its_send_reaches_the_agent_once(
    wa: WhatsApp, tmp_path: Path, nats_server: NatsServer
) -> None:
    # Meta's status webhook for a message the twin sends can overtake, by any margin, the note the twin writes once
    # Graph answers it. Here this instance has taken the status and finished with it before the twin even sends.
    await heard(wa, "hi")
    sent = SentMessage("wamid.HBgLTwinNotedLate01=", ADA, {"type": "text", "text": {"body": "from the twin"}})
    wa.graph.wamids.append(sent.wamid)  # what Graph will call the twin's message
    assert await wa.graph.status(sent, "read") == 200
    await eventually(lambda: took_every_delivery(wa), timeout=30, message=wa.bridge.output)
    assert wa.bridge.stop() == 0
    twin = WhatsAppProcess(tmp_path / "host-b", nats_server.url, wa.graph).start()
    try:
        await wa.bus.send_to(ADA, "from the twin", id="twin-2", session_id="s1", seq=9)

        async def answered() -> list[ev.DeliveryReceipt] | None:  # the twin reports what was left, then the send
            mine = [r for r in await wa.bus.receipts() if r.outbound_id == "twin-2"]
            return mine if any(r.state == "delivered" for r in mine) else None

        receipts = await eventually(answered, timeout=30, message=twin.output)
        assert [m.wamid for m in wa.graph.to(ADA)] == [sent.wamid]
        assert sorted((r.state, r.ok, r.session_id, r.seq, r.platform_message_id) for r in receipts) == [
            ("delivered", True, "s1", 9, sent.wamid),
            ("read", True, "s1", 9, sent.wamid),
        ]
    finally:
        twin.close()


async def test_a_status_naming_a_message_nobody_sent_gives_no_receipt_and_one_info_line(wa: WhatsApp) -> None:
    await heard(wa, "hi")
    before = len(wa.bridge.output())
    nobody = SentMessage("wamid.HBgLNobodySentIt01=", ADA, {"type": "text", "text": {"body": "from elsewhere"}})
    assert await wa.graph.status(nobody, "delivered") == 200
    await eventually(lambda: took_every_delivery(wa), timeout=30, message=wa.bridge.output)
    said = wa.bridge.output()[before:].splitlines()
    assert len(said) == 1 and " I clawden.channels.whatsapp: " in said[0] and nobody.wamid in said[0], said
    assert [r for r in await wa.bus.receipts() if r.platform_message_id == nobody.wamid] == []
