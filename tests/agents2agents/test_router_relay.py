"""Agents that talk to each other, through the real router on real NATS: a send on the agent channel (as the
runner publishes it) becomes a wake in the other group's session from `agent:<group>`, its answer comes back
to the session that asked, a loop stops at the hop limit with the reason recorded, each send is relayed once
however often it is delivered, and nothing an agent sends can speak as a person or click a card."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Literal

import pytest
from nats.js import JetStreamContext
from nats.js.api import Header

from clawden import control
from clawden.bus import Consumer, bind, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import router as api
from services.router import relay
from tests.eventually import eventually
from tests.router.conftest import RouterProcess, start_router, stop, wait_ready

OWNER = "telegram:owner"


class Bus:
    """What the router publishes where a runner and the approvals service would read it."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.wakes: list[ev.Wake] = []
        self.receipts: list[ev.DeliveryReceipt] = []
        self.clicks: list[ev.Event] = []

    async def start(self) -> None:
        self.wake_sub = await bind(self.js, Consumer("CLAWDEN_WAKE", "t-wakes", f"{subjects.PREFIX}.wake.>"), batch=64)
        self.receipt_sub = await bind(
            self.js, Consumer("CLAWDEN_RECEIPTS", "t-rcpt", subjects.receipt("agent")), batch=64
        )
        self.click_sub = await bind(
            self.js, Consumer("CLAWDEN_APPROVALS", "t-clicks", subjects.APPROVAL_CLICK), batch=64
        )

    async def pull(self) -> None:
        for sub, into in (
            (self.wake_sub, self.wakes),
            (self.receipt_sub, self.receipts),
            (self.click_sub, self.clicks),
        ):
            for msg in await sub.next(timeout=0.1):
                into.append(ev.decode(msg.data))  # type: ignore[arg-type]
                await msg.ack()

    async def wake_for(self, group: str, n: int = 1) -> ev.Wake:
        async def nth() -> ev.Wake | None:
            await self.pull()
            mine = [w for w in self.wakes if w.agent_group == group]
            return mine[n - 1] if len(mine) >= n else None

        return await eventually(nth, timeout=30, message=f"wake {n} of {group}")

    async def receipt_of(self, outbound_id: str) -> ev.DeliveryReceipt:
        async def found() -> ev.DeliveryReceipt | None:
            await self.pull()
            return next((r for r in self.receipts if r.outbound_id == outbound_id), None)

        return await eventually(found, timeout=30, message=f"receipt of {outbound_id}")


async def person_says(js: JetStreamContext, text: str, n: int) -> None:
    event = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id="kitchen"),
        message_id=f"m{n}",
        sender=ev.Sender(id="local:ada", name="ada"),
        text=text,
        sent_at=time.time(),
    )
    await js.publish(subjects.inbound("local"), ev.encode(event), headers={Header.MSG_ID: event.key})


async def agent_sends(
    js: JetStreamContext, wake: ev.Wake, route: ev.Route, text: str, row: str, *, msg_id: str = ""
) -> ev.OutboundMessage:
    """What the runner publishes for a `send_message` row of `wake`'s session (services/runner/outbound.py)."""
    out = ev.OutboundMessage(
        id=f"{wake.session_id}:{row}",
        route=route,
        text=text,
        session_id=wake.session_id,
        agent_group=wake.agent_group,
        seq=1,
    )
    subject = subjects.outbound(route.channel, route.chat_id)
    await js.publish(subject, ev.encode(out), headers={Header.MSG_ID: msg_id or out.id})
    return out


@pytest.fixture
async def bus(router: RouterProcess, js: JetStreamContext) -> Bus:
    await router.ask(api.GROUPS_CREATE, api.GroupCreate(name="writer"))
    await router.ask(
        api.DESTINATIONS_ADD,
        api.DestinationAdd(agent_group="main", name="writer", channel="agent", chat_id="writer"),
    )
    b = Bus(js)
    await b.start()
    return b


async def test_a_send_to_an_agent_destination_wakes_it_as_an_agent_and_its_answer_comes_back(
    router: RouterProcess, js: JetStreamContext, bus: Bus
) -> None:
    await person_says(js, "ask the writer for a title", 1)
    asked = await bus.wake_for("main")
    assert [(d.name, d.route.channel, d.route.chat_id) for d in asked.destinations or ()] == [
        ("writer", "agent", "writer")
    ]
    sent = await agent_sends(js, asked, ev.Route(channel="agent", chat_id="writer"), "A title, please?", "r1")

    into_b = await bus.wake_for("writer")
    assert into_b.message.text == "A title, please?"
    assert into_b.message.sender == ev.Sender(id="agent:main", name="agent main", is_bot=True)
    assert (into_b.message.hops, into_b.route) == (
        1,
        ev.Route(channel="agent", chat_id="main", thread_id=asked.session_id),
    )
    assert (await bus.receipt_of(sent.id)).ok

    # B answers in its own chat (no `to`): the runner sends it on B's route, and it lands in A's session.
    await agent_sends(js, into_b, into_b.route, "How about 'Dawn'?", "r1")
    back = await bus.wake_for("main", 2)
    assert (back.session_id, back.route) == (asked.session_id, asked.route)
    assert (back.message.text, back.message.sender.id if back.message.sender else "") == (
        "How about 'Dawn'?",
        "agent:writer",
    )
    assert back.message.hops == 2


async def test_bs_runner_failing_to_answer_reaches_the_asking_session_as_a_failure(
    router: RouterProcess, js: JetStreamContext, bus: Bus
) -> None:
    await person_says(js, "ask the writer for a title", 1)
    asked = await bus.wake_for("main")
    await agent_sends(js, asked, ev.Route(channel="agent", chat_id="writer"), "A title, please?", "r1")
    into_b = await bus.wake_for("writer")

    # What the runner publishes when B's turn fails (services/runner/service.py `_fail`), and a plain notice.
    kinds: tuple[tuple[str, Literal["error", "notice"]], ...] = (("failed-1", "error"), ("note-1", "notice"))
    for key, kind in kinds:
        told = ev.OutboundMessage(
            id=f"{into_b.session_id}:{key}",
            route=into_b.route,
            text="Sorry — I couldn't answer that: the model is unreachable",
            session_id=into_b.session_id,
            agent_group="writer",
            kind=kind,
        )
        await js.publish(
            subjects.outbound("agent", into_b.route.chat_id), ev.encode(told), headers={Header.MSG_ID: told.id}
        )

    back = await bus.wake_for("main", 2)
    assert (back.session_id, back.message.sender) == (asked.session_id, relay.sender("writer"))
    assert back.message.text == (
        "(Clawden: agent group writer could not answer: Sorry — I couldn't answer that: the model is unreachable)"
    )
    assert back.message.hops == 2
    assert (await router.stats())["agent_ignored"] == 1  # the notice


async def test_a_redelivered_send_is_relayed_once(router: RouterProcess, js: JetStreamContext, bus: Bus) -> None:
    await person_says(js, "ask the writer", 1)
    asked = await bus.wake_for("main")
    to_b = ev.Route(channel="agent", chat_id="writer")
    # The same row published again past JetStream's dedupe (a new Nats-Msg-Id), as after a runner restart.
    await agent_sends(js, asked, to_b, "once", "r1")
    await agent_sends(js, asked, to_b, "once", "r1", msg_id="again")
    await agent_sends(js, asked, to_b, "twice", "r2")
    await bus.wake_for("writer", 2)
    stats = await eventually(
        lambda: _when(router, lambda s: s.get("duplicates", 0) >= 1), timeout=30, message="the duplicate counted"
    )
    assert stats["relayed"] == 2
    await bus.pull()
    assert [w.message.text for w in bus.wakes if w.agent_group == "writer"] == ["once", "twice"]


async def _when(router: RouterProcess, ok: object) -> dict[str, int] | None:
    stats = await router.stats()
    return stats if ok(stats) else None  # type: ignore[operator]


async def test_an_a_b_loop_stops_at_the_hop_limit_with_the_reason_in_dropped(
    router: RouterProcess, js: JetStreamContext, bus: Bus
) -> None:
    await router.ask(
        api.DESTINATIONS_ADD, api.DestinationAdd(agent_group="writer", name="main", channel="agent", chat_id="main")
    )
    await person_says(js, "start", 1)
    a = first = await bus.wake_for("main")
    hops, row = [], 0
    sent = None
    while True:
        row += 1
        target = "writer" if a.agent_group == "main" else "main"
        await bus.pull()
        seen = sum(1 for w in bus.wakes if w.agent_group == target)
        sent = await agent_sends(js, a, ev.Route(channel="agent", chat_id=target), f"ping {row}", f"r{row}")
        receipt = await bus.receipt_of(sent.id)
        if not receipt.ok:
            break
        a = await bus.wake_for(target, seen + 1)
        hops.append(a.message.hops)
    assert hops == [1, 2, 3, 4]
    assert receipt.error and "hop limit 4 reached" in receipt.error
    [dropped] = await router.ask(api.DROPPED_LIST, api.DroppedList(channel="agent"))
    assert (dropped.key, dropped.sender_id) == (f"agent:{sent.id}", "agent:main")
    assert "hop limit 4 reached (5 agent-to-agent sends in a row): main -> writer" in dropped.reason
    assert "dropped: hop limit 4 reached" in router.output()

    # A person speaking starts the count afresh.
    await person_says(js, "again", 2)
    fresh = await bus.wake_for("main", 4)
    assert (fresh.message.text, fresh.session_id) == ("again", first.session_id)
    await agent_sends(js, fresh, ev.Route(channel="agent", chat_id="writer"), "new question", "r99")
    assert (await bus.wake_for("writer", 3)).message.hops == 1


async def test_a_send_without_a_destination_or_into_a_session_it_did_not_open_is_dropped(
    router: RouterProcess, js: JetStreamContext, bus: Bus
) -> None:
    await person_says(js, "hello", 1)
    a = await bus.wake_for("main")
    await router.ask(api.GROUPS_CREATE, api.GroupCreate(name="bank"))
    sent = await agent_sends(js, a, ev.Route(channel="agent", chat_id="bank"), "transfer", "r1")
    assert (await bus.receipt_of(sent.id)).error == "main has no destination for agent group 'bank'"
    forged = await agent_sends(js, a, ev.Route(channel="agent", chat_id="main", thread_id=a.session_id), "x", "r2")
    assert "may not answer" in ((await bus.receipt_of(forged.id)).error or "")
    assert not [w for w in bus.wakes if w.agent_group == "bank"]


async def test_an_agent_can_never_speak_as_a_person_nor_press_a_button(
    router: RouterProcess, js: JetStreamContext, bus: Bus
) -> None:
    # No bridge speaks for the agent channel: a click or a message on it is refused before anything reads it.
    click = ev.InboundAction(
        route=ev.Route(channel="agent", chat_id="main"),
        action_id="a1",
        sender=ev.Sender(id=OWNER),
        card_id="c1",
        button_id="approve",
    )
    await js.publish(subjects.inbound("agent"), ev.encode(click), headers={Header.MSG_ID: click.key})
    words = ev.InboundMessage(
        route=ev.Route(channel="agent", chat_id="main"),
        message_id="m1",
        sender=ev.Sender(id="agent:writer"),
        text="/clear",
        sent_at=1.0,
    )
    await js.publish(subjects.inbound("agent"), ev.encode(words), headers={Header.MSG_ID: words.key})
    await eventually(lambda: _when(router, lambda s: s.get("poisoned", 0) >= 2), timeout=30, message="both refused")
    await bus.pull()
    assert bus.clicks == [] and bus.wakes == []
    # And `agent:<group>`, who every relayed message is from, can hold no role: never an approver.
    for request in (
        (api.ROLES_GRANT, api.RoleGrant(user_id="agent:writer", role="owner")),
        (api.ROLES_GRANT, api.RoleGrant(user_id="agent:writer", role="admin", agent_group="main")),
        (api.MEMBERS_ADD, api.MemberAdd(agent_group="main", user_id="agent:writer")),
    ):
        with pytest.raises(control.ControlError, match="only people hold roles"):
            await router.ask(*request)  # type: ignore[call-overload]
    approvers = await router.ask(api.APPROVERS, api.ApproversGet(agent_group="main"))
    assert not [u for u in approvers.approvers if u.startswith("agent:")]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("main", "--agent", "nosuch"), "no agent group named 'nosuch'"),
        (("main", "--agent", "writer", "--max-hops", "99"), "max hops 99: give a number from 1 to 32"),
        (("main", "--agent", "writer", "--thread", "t1"), "a destination that is an agent group has no thread"),
        (("main", "w", "local", "kitchen", "--agent", "writer"), "give --agent or a channel and chat id, not both"),
        (("main", "w", "local", "kitchen", "--max-hops", "3"), "--max-hops is for --agent"),
        (("main", "w"), "give a name, a channel and a chat id"),
    ],
)
async def test_the_cli_refuses_a_bad_agent_destination_saying_why(
    router: RouterProcess, bus: Bus, args: tuple[str, ...], said: str
) -> None:
    done = clawden(router, "destinations", "add", *args)
    assert done.returncode != 0 and said in done.stderr and "Traceback" not in done.stderr


async def test_the_cli_adds_an_agent_destination_named_after_the_group_with_its_hop_limit(
    router: RouterProcess, bus: Bus
) -> None:
    await router.ask(api.GROUPS_CREATE, api.GroupCreate(name="critic"))
    done = clawden(router, "destinations", "add", "main", "--agent", "critic", "--max-hops", "2")
    assert (done.returncode, done.stdout.strip()) == (0, "main may now send to critic")
    rows = await router.ask(api.DESTINATIONS_LIST, api.GroupFilter(agent_group="main"))
    assert [(d.name, d.channel, d.chat_id, d.max_hops) for d in rows] == [
        ("critic", "agent", "critic", 2),
        ("writer", "agent", "writer", 0),
    ]


def clawden(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawden", *args], env=router.env(), capture_output=True, text=True, timeout=60
    )


async def test_a_send_made_while_the_router_is_down_is_relayed_once_after_it_restarts_and_once_only(
    router: RouterProcess, js: JetStreamContext, bus: Bus
) -> None:
    await person_says(js, "ask the writer", 1)
    asked = await bus.wake_for("main")
    stop(router.proc)
    await agent_sends(js, asked, ev.Route(channel="agent", chat_id="writer"), "while you were out", "r1")
    router.proc = start_router(router.home, router.url)
    await wait_ready(router)
    assert (await bus.wake_for("writer")).message.text == "while you were out"
    # Another restart, and the same row published again: relayed already, so nothing new.
    stop(router.proc)
    router.proc = start_router(router.home, router.url)
    await wait_ready(router)
    await agent_sends(js, asked, ev.Route(channel="agent", chat_id="writer"), "while you were out", "r1", msg_id="x")
    await agent_sends(js, asked, ev.Route(channel="agent", chat_id="writer"), "later", "r2")
    assert (await bus.wake_for("writer", 2)).message.text == "later"
    await bus.pull()
    assert [w.message.text for w in bus.wakes if w.agent_group == "writer"] == ["while you were out", "later"]
