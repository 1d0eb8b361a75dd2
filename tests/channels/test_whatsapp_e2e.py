"""End to end over WhatsApp: `clawden up` (router, runner, vault, approvals), the real front door and bridge
processes under their own NATS identities, the fake Graph API posting signed webhooks, a real agent
container running Claude Code against the fake model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from clawden import config as config_mod
from clawden import control, sessiondb
from clawden.bus.ctl import router as router_ctl
from tests.channels.whatsapp_harness import WhatsAppProcess
from tests.e2e.harness import Stack, session_folder
from tests.eventually import eventually
from tests.fakes.anthropic import Text, ToolCall
from tests.fakes.telegram import png
from tests.fakes.whatsapp import FakeGraph, MetaRetries, SentMessage, body_of, rebatched
from tests.webhooks.harness import FrontDoorProcess, make_home

pytestmark = pytest.mark.docker
ANSWER = 120.0  # a first message starts a container
TEMPLATE = "hello_again"  # what the bridge sends instead when the 24-hour window is closed


class WhatsApp:
    def __init__(self, graph: FakeGraph, door: FrontDoorProcess, bridge: WhatsAppProcess) -> None:
        self.graph, self.door, self.bridge = graph, door, bridge

    def logs(self) -> str:
        return f"bridge:\n{self.bridge.output()}\nfront door:\n{self.door.output()}"


@pytest.fixture(scope="module")
def wa(stack: Stack) -> Iterator[WhatsApp]:
    port = make_home(stack.home)  # the keys and [webhooks]; `clawden up` already runs, the door is started here
    door = FrontDoorProcess(stack.home, stack.nats_url, port, stack.home / "logs" / "webhooks-test.log")
    graph = FakeGraph(door.sender()).start_in_thread()
    asyncio.run(door.start())
    bridge = WhatsAppProcess(stack.home, stack.nats_url, graph, template=TEMPLATE).start()
    yield WhatsApp(graph, door, bridge)
    bridge.close()
    door.stop()
    graph.stop_thread()
    assert graph.token not in bridge.output()


async def wire(stack: Stack, wa_id: str) -> None:
    cfg = config_mod.load(stack.home)
    await control.ask(
        cfg,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel="whatsapp", chat_id=wa_id, name="Ada", is_group=False, policy="public"),
    )
    await control.ask(
        cfg, router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="whatsapp", chat_id=wa_id, agent_group="main")
    )


async def answers(wa: WhatsApp, wa_id: str, count: int, timeout: float = ANSWER) -> list[SentMessage]:
    return await eventually(
        lambda: wa.graph.to(wa_id)[count - 1 :] and wa.graph.to(wa_id), timeout=timeout, message=wa.logs
    )


def session_dirs(stack: Stack) -> list[Path]:
    return [p for p in (stack.home / "sessions" / "main").iterdir() if (p / sessiondb.INBOUND).exists()]


def session_of(stack: Stack, wa_id: str) -> Path | None:
    return session_folder(stack, wa_id)


def quiet(stack: Stack) -> bool:
    """Every session's triggering messages are finished and everything the agents wrote was published."""
    return all(not sessiondb.unfinished(d) and not sessiondb.read_new_outbound(d) for d in session_dirs(stack))


async def drained(js: JetStreamContext) -> bool:
    """No durable has a message pending or unacknowledged: every delivery, inbound event, wake, reply and
    receipt was taken and settled. (A closed terminal's durable keeps what nobody reads: left out.)"""
    for stream in await js.streams_info():
        for c in await js.consumers_info(stream.config.name or ""):
            if (c.num_pending or c.num_ack_pending) and not c.name.startswith("channel-local-"):
                return False
    return True


def receipt_row(stack: Stack, wa_id: str, wamid: str) -> tuple[str, str, float] | None:
    """The session's receipt for the message WhatsApp knows as `wamid`: (its id, status, when recorded)."""
    folder = session_of(stack, wa_id)
    if folder is None:
        return None
    with sessiondb.opened(folder / sessiondb.INBOUND, readonly=True) as conn:
        row = conn.execute(
            "SELECT platform_message_id, status, delivered_at FROM delivered WHERE platform_message_id = ?", (wamid,)
        ).fetchone()
    return (str(row[0]), str(row[1]), float(row[2])) if row else None


def told(stack: Stack, text: str) -> bool:
    """The agent's model saw `text` in a prompt (a <delivery-failed> note rides on the next turn's prompt)."""
    return any(text in str(r.body) for r in stack.fake.messages_requests(with_tools=True))


def message(sender: Any, wa_id: str, text: str, *, written_hours_ago: float = 0.0) -> dict[str, Any]:
    """A person's text as Meta posts it; `timestamp` is when they wrote it, by Meta's clock."""
    payload: dict[str, Any] = sender.text(wa_id, text)
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(
        int(time.time() - written_hours_ago * 3600)
    )
    return payload


async def test_a_whatsapp_message_is_answered_and_a_failed_status_reaches_the_agent(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900201"
    await wire(stack, ada)
    _, status = await wa.graph.user_writes(ada, "what is on today?")
    assert status == 200
    [answer] = await answers(wa, ada, 1)
    assert answer.text.startswith("echo: ") and "what is on today?" in answer.text
    # The bridge receipts a send once it has noted the wamid; a status posted before that would name a
    # message it does not know yet (the fake records the send before the bridge hears Graph's answer).
    await eventually(lambda: receipt_row(stack, ada, answer.wamid), timeout=30, message=wa.logs)
    # Later WhatsApp reports that it could not deliver it after all: the agent learns why.
    assert await wa.graph.status(answer, "failed", errors=[{"code": 131026, "title": "Message undeliverable"}]) == 200

    def failure() -> list[tuple[int, str]]:
        return [
            f for d in session_dirs(stack) for f in sessiondb.failed_deliveries(d) if "Message undeliverable" in f[1]
        ]

    [(_, error)] = await eventually(failure, timeout=30, message=wa.logs)
    assert "131026" in error


async def test_a_question_card_becomes_reply_buttons_and_the_press_answers_it(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900202"
    await wire(stack, ada)
    # The script is the model's next answer, whoever asks: no other session may still have a turn to end.
    await eventually(lambda: quiet(stack), timeout=60, message=wa.logs)
    stack.fake.script(
        ToolCall("ask_user_question", {"question": "Tea or coffee?", "options": ["Tea", "Coffee"], "timeout": 90}),
        Text("ok"),
    )
    await wa.graph.user_writes(ada, "ask me something")
    card = (
        await eventually(
            lambda: [m for m in wa.graph.to(ada) if m.type == "interactive"], timeout=ANSWER, message=wa.logs
        )
    )[0]
    buttons = card.payload["interactive"]["action"]["buttons"]
    assert [b["reply"]["title"] for b in buttons] == ["Tea", "Coffee"]
    await wa.graph.user_presses(ada, card, 1)

    def chose() -> bool:
        return any("The user chose: Coffee" in str(r.body) for r in stack.fake.messages_requests(with_tools=True))

    await eventually(chose, timeout=60, message=wa.logs)


async def test_an_image_reaches_the_agents_inbox(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900203"
    await wire(stack, ada)
    picture = png(5, 4)
    await wa.graph.user_sends_image(ada, picture, caption="what is this?")
    await answers(wa, ada, 1)  # the runner puts a message's files in the inbox before the agent reads it
    folder = session_of(stack, ada)
    assert folder is not None
    assert [f.read_bytes() for f in (folder / "inbox").rglob("*") if f.is_file()] == [picture]


def delivery_of(stack: Stack, wa_id: str, wamid: str) -> sessiondb.Delivery | None:
    """What the chat's session knows of the agent's message that WhatsApp knows as `wamid`."""
    folder = session_of(stack, wa_id)
    if folder is None:
        return None
    with sessiondb.opened(folder / sessiondb.INBOUND, readonly=True) as conn:
        row = conn.execute("SELECT out_seq FROM delivered WHERE platform_message_id = ?", (wamid,)).fetchone()
    return sessiondb.delivery(folder, int(row[0])) if row else None


async def test_a_read_status_becomes_a_read_receipt_the_agent_can_see(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900204"
    await wire(stack, ada)
    await wa.graph.user_writes(ada, "let me know when I have read this")
    [answer] = await answers(wa, ada, 1)
    sent = await eventually(lambda: delivery_of(stack, ada, answer.wamid), timeout=30, message=wa.logs)
    assert sent.state == "delivered"  # the bridge's word when Graph took it
    # Ada has the chat open: Meta posts "read" and no "delivered" ("Status messages webhook reference").
    assert await wa.graph.status(answer, "read") == 200

    def read() -> sessiondb.Delivery | None:
        now = delivery_of(stack, ada, answer.wamid)
        return now if now is not None and now.state == "read" else None

    seen = await eventually(read, timeout=30, message=wa.logs)
    assert seen.out_seq == sent.out_seq and seen.delivered_at == sent.delivered_at and seen.read_at is not None

    # The agent asks: its message_status tool reads the session's receipt, in the real container.
    await eventually(lambda: quiet(stack), timeout=60, message=wa.logs)
    stack.fake.script(ToolCall("message_status", {"seq": seen.out_seq}), Text("you read it"))
    await wa.graph.user_writes(ada, "did I read your answer?")
    await eventually(lambda: told(stack, f"#{seen.out_seq}: read at "), timeout=ANSWER, message=wa.logs)


async def test_a_reply_meta_refuses_as_outside_the_window_is_reported_to_the_agent(stack: Stack, wa: WhatsApp) -> None:
    ada = "447700900205"
    await wire(stack, ada)
    # Ada wrote 24.5 hours ago by Meta's clock, which is an hour ahead of this server's: the bridge counts
    # 23.5 hours and sends the answer; Meta accepts the call and then reports it failed with 131047
    # ("Error codes": Re-engagement message), as the fake does.
    assert wa.graph.sender is not None
    wa.graph.age_window(ada, 24.5)
    assert (
        await wa.graph.sender.post(message(wa.graph.sender, ada, "still there?", written_hours_ago=23.5))
    ).status_code == 200
    refused = await eventually(
        lambda: wa.graph.undelivered and [m for m in wa.graph.undelivered if m.to == ada],
        timeout=ANSWER,
        message=wa.logs,
    )
    assert "still there?" in refused[0].text
    assert wa.graph.to(ada) == []

    def failure() -> list[tuple[int, str]]:
        folder = session_of(stack, ada)
        return [f for f in sessiondb.failed_deliveries(folder) if "131047" in f[1]] if folder else []

    [(_, error)] = await eventually(failure, timeout=30, message=wa.logs)
    assert "Re-engagement message" in error
    # When Ada writes again, the agent's next prompt says which of its messages never arrived, and why.
    await wa.graph.user_writes(ada, "hello again")
    await eventually(lambda: told(stack, "Re-engagement message (131047)"), timeout=ANSWER, message=wa.logs)
    [answer] = await answers(wa, ada, 1)
    assert "hello again" in answer.text


async def test_a_reply_past_the_window_is_refused_by_the_bridge_and_the_template_goes_instead(
    stack: Stack, wa: WhatsApp
) -> None:
    ada = "447700900206"
    await wire(stack, ada)
    # Meta retried this message for 25 hours while nothing answered: by the time the agent replies, the
    # window is shut, and the bridge knows it from the message's own timestamp.
    assert wa.graph.sender is not None
    wa.graph.age_window(ada, 25)
    assert (
        await wa.graph.sender.post(message(wa.graph.sender, ada, "are you up?", written_hours_ago=25))
    ).status_code == 200

    def failure() -> list[tuple[int, str]]:
        folder = session_of(stack, ada)
        return [f for f in sessiondb.failed_deliveries(folder) if "24 hours" in f[1]] if folder else []

    [(_, error)] = await eventually(failure, timeout=ANSWER, message=wa.logs)
    assert "25 hours ago" in error and f"the template {TEMPLATE!r} was sent" in error
    [invitation] = wa.graph.to(ada)  # only the template: the free-form answer never left the bridge
    assert invitation.type == "template" and invitation.payload["template"]["name"] == TEMPLATE
    assert [m for m in wa.graph.undelivered if m.to == ada] == []


async def test_the_front_door_killed_with_a_hundred_in_flight_still_answers_each_message_once(
    stack: Stack, wa: WhatsApp
) -> None:
    people = [f"4477009003{n:02d}" for n in range(4)]
    for person in people:
        await wire(stack, person)
        wa.graph.age_window(person, 0)  # each has just written: Meta lets the business answer
    sender = wa.door.sender()
    tokens = [f"Q{i:03d}Z" for i in range(100)]
    payloads = [message(sender, people[(i // 2) % 4], f"question {t}") for i, t in enumerate(tokens)]
    bodies = [body_of(p) for p in payloads]
    release = asyncio.Event()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        meta = MetaRetries(sender, client)
        # All 100 at once; every other one is held mid-body, so 50 are in flight at the kill by construction.
        held = [i % 2 == 1 for i in range(100)]
        flight = [
            asyncio.create_task(meta.deliver(b, hold=release if h else None)) for b, h in zip(bodies, held, strict=True)
        ]
        await eventually(
            lambda: len(meta.answered) >= 20 and meta.held == 50,
            timeout=60,
            message=lambda: f"{len(meta.answered)} answered, {meta.held} held, {meta.failed} failed\n{wa.logs()}",
        )
        wa.door.kill()
        release.set()
        assert not any(bodies[i] in meta.answered for i in range(100) if held[i])
        await wa.door.start()
        await asyncio.gather(*flight)  # Meta retried each until it was answered 200
        for body in bodies[::10]:  # ... and sends the odd one twice, byte for byte (the door's key stops it)
            await meta.deliver(body)
        for payload in payloads[5::20]:  # ... or in another batch (new bytes: the bridge's message-id key stops it)
            await meta.deliver(rebatched(payload))
    assert meta.failed >= 50
    nc = await stack.connect("test-drain")
    try:
        js = nc.jetstream()

        async def all_answered_and_settled() -> list[str] | None:
            texts = [m.text for person in people for m in wa.graph.to(person)]
            if not all(any(t in text for text in texts) for t in tokens):
                return None
            # Nothing is left anywhere that could still make a reply: every stream's durables are
            # drained and every session has finished and published all it wrote.
            return texts if await asyncio.to_thread(quiet, stack) and await drained(js) else None

        texts = await eventually(all_answered_and_settled, timeout=3 * ANSWER, message=wa.logs)
    finally:
        await nc.close()
    counts = {t: sum(text.count(t) for text in texts) for t in tokens}
    assert {t: n for t, n in counts.items() if n != 1} == {}, texts
