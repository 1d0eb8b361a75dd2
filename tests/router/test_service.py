"""The router as a real process on real NATS: bursts with duplicates, approvals, pairing, the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict

from nats.js import JetStreamContext
from nats.js.api import Header

from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import router as router_ctl
from tests.eventually import eventually
from tests.router.conftest import RouterProcess, collect
from tests.router.test_store import too_large_with_its_agents_settings

WAKES = f"{subjects.PREFIX}.wake.>"


def chat_message(
    n: int,
    *,
    chat: str,
    text: str = "",
    sender: str = "telegram:u1",
    channel: str = "telegram",
    mentioned: bool = False,
    group: bool = False,
) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel=channel, chat_id=chat),
        message_id=f"m{n}",
        sender=ev.Sender(id=sender),
        text=text or f"line {n}",
        sent_at=float(n),
        is_group=group,
        mentioned=mentioned,
    )


async def send(js: JetStreamContext, event: ev.InboundMessage, msg_id: str | None = None) -> None:
    await js.publish(
        subjects.inbound(event.route.channel), ev.encode(event), headers={Header.MSG_ID: msg_id or event.key}
    )


async def test_a_burst_of_events_each_sent_twice_yields_one_wake_per_engaged_event_and_group(
    router: RouterProcess, js: JetStreamContext
) -> None:
    await router.ask(router_ctl.GROUPS_CREATE, router_ctl.GroupCreate(name="alpha"))
    await router.ask(router_ctl.GROUPS_CREATE, router_ctl.GroupCreate(name="beta"))
    await router.ask(
        router_ctl.CHATS_CREATE, router_ctl.ChatCreate(channel="test", chat_id="*", is_group=True, policy="public")
    )
    await router.ask(
        router_ctl.WIRINGS_CREATE,
        router_ctl.WiringCreate(channel="test", chat_id="*", agent_group="alpha", engage_mode="pattern"),
    )
    await router.ask(
        router_ctl.WIRINGS_CREATE,
        router_ctl.WiringCreate(channel="test", chat_id="*", agent_group="beta", engage_mode="mention"),
    )
    burst = [
        chat_message(i, chat=f"chat{i % 50}", channel="test", sender=f"test:u{i % 7}", group=True, mentioned=i % 3 == 0)
        for i in range(1000)
    ]
    expected = {(e.key, "alpha") for e in burst} | {(e.key, "beta") for e in burst if e.mentioned}
    for i, event in enumerate(burst):
        await send(js, event)
        # Half the second copies reuse the Nats-Msg-Id (JetStream drops them); the other half carry a
        # new one, as a bridge redelivering after the dedupe window would: only the router catches those.
        await send(js, event, event.key if i % 2 else f"{event.key}:again")

    wakes = [w for w in await collect(js, "t-wakes", WAKES, want=len(expected)) if isinstance(w, ev.Wake)]

    routed = Counter((w.message.id.rsplit(":", 1)[0], w.agent_group) for w in wakes)
    assert set(routed) == expected
    assert max(routed.values()) == 1
    by_session: dict[str, list[float]] = defaultdict(list)
    for w in wakes:
        by_session[w.session_id].append(w.message.sent_at)
    assert all(times == sorted(times) for times in by_session.values())  # each chat in the order sent
    assert len(by_session) == 100  # 50 chats x 2 groups
    stats = await router.stats()
    assert (stats["routed"], stats["duplicates"]) == (1000, 500)


async def test_an_unknown_sender_waits_for_approval_and_is_replayed_when_the_owner_approves(
    router: RouterProcess, js: JetStreamContext
) -> None:
    await router.ask(
        router_ctl.CHATS_CREATE, router_ctl.ChatCreate(channel="telegram", chat_id="c1", policy="request_approval")
    )
    await router.ask(
        router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="telegram", chat_id="c1", agent_group="main")
    )
    [owner] = [r.user_id for r in await router.ask(router_ctl.ROLES_LIST, router_ctl.ListAll())]
    await send(js, chat_message(1, chat="c1", text="first", sender="telegram:stranger"))
    await send(js, chat_message(2, chat="c1", text="second", sender="telegram:stranger"))

    [request] = await collect(js, "t-requests", subjects.APPROVAL_REQUEST, want=1)
    assert isinstance(request, ev.ApprovalRequest)
    assert (request.kind, request.approvers) == ("sender", (owner,))
    assert await collect(js, "t-wakes", WAKES, want=0, settle=0.5) == []

    async def decide(by: str) -> None:
        decision = ev.ApprovalDecision(id=request.id, decision="approved", decided_by=by)
        await js.publish(
            subjects.approval_decision(request.id), ev.encode(decision), headers={Header.MSG_ID: f"{request.id}:{by}"}
        )

    await decide("telegram:stranger")  # clicking your own card is not an approval
    assert await collect(js, "t-wakes", WAKES, want=0, settle=1.0) == []
    await decide(owner)
    wakes = await collect(js, "t-wakes", WAKES, want=2)
    assert [w.message.text for w in wakes if isinstance(w, ev.Wake)] == ["first", "second"]
    members = await router.ask(router_ctl.MEMBERS_LIST, router_ctl.GroupFilter(agent_group="main"))
    assert [m.user_id for m in members] == ["telegram:stranger"]


async def test_a_non_admin_is_refused_clear_until_paired_as_owner(router: RouterProcess, js: JetStreamContext) -> None:
    await router.ask(router_ctl.CHATS_CREATE, router_ctl.ChatCreate(channel="telegram", chat_id="c1", policy="public"))
    await router.ask(
        router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="telegram", chat_id="c1", agent_group="main")
    )
    outbound = subjects.outbound("telegram", "c1")

    await send(js, chat_message(1, chat="c1", text="/clear"))
    [refusal] = await collect(js, "t-out", outbound, want=1)
    assert isinstance(refusal, ev.OutboundMessage) and refusal.text == "Only an admin of main can use /clear."
    assert refusal.kind == "error"  # `clawden chat --once` exits 1 on it

    code = (await router.ask(router_ctl.PAIR, router_ctl.PairCreate(channel="telegram"))).code
    await send(js, chat_message(2, chat="c1", text=code))
    [paired] = await collect(js, "t-out", outbound, want=1)
    assert isinstance(paired, ev.OutboundMessage) and paired.text.startswith("Paired: telegram:u1")

    await send(js, chat_message(3, chat="c1", text="/clear"))
    [wake] = await collect(js, "t-wakes", WAKES, want=1)
    assert isinstance(wake, ev.Wake) and wake.command == "clear"


async def test_a_malformed_event_is_dropped_and_routing_goes_on(router: RouterProcess, js: JetStreamContext) -> None:
    await js.publish(subjects.inbound("local"), b'{"type":"inbound.message","route":{}}')
    await send(js, chat_message(1, chat="terminal", channel="local", sender="local:someone"))
    [wake] = await collect(js, "t-wakes", WAKES, want=1)
    assert isinstance(wake, ev.Wake) and wake.agent_group == "main"
    assert (await router.stats())["poisoned"] == 1


async def test_a_message_whose_route_names_another_channel_than_its_subject_is_dropped(
    router: RouterProcess, js: JetStreamContext
) -> None:
    # The telegram bridge may publish only on inbound.telegram; inside, it must not speak as the terminal
    # (where `local *` reaches main as the owner).
    spoof = chat_message(1, chat="terminal", channel="local", sender="local:owner")
    await js.publish(subjects.inbound("telegram"), ev.encode(spoof))
    await send(js, chat_message(2, chat="terminal", channel="local", sender="local:someone"))
    [wake] = await collect(js, "t-wakes", WAKES, want=1)
    assert isinstance(wake, ev.Wake) and wake.message.id.startswith("local:m2")
    assert (await router.stats())["poisoned"] == 1


def clawden(router: RouterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawden", *args], env=router.env(), capture_output=True, text=True, timeout=60
    )


async def test_the_cli_manages_groups_and_wirings_and_says_plainly_what_went_wrong(router: RouterProcess) -> None:
    def session() -> list[subprocess.CompletedProcess[str]]:
        return [
            clawden(router, "groups", "create", "family"),
            clawden(router, "wire", "add", "telegram", "-1001", "family", "--engage", "mention-sticky"),
            clawden(router, "wire", "list", "--json"),
            clawden(router, "wire", "add", "telegram", "-1001", "ghost"),
            clawden(router, "wire", "update", "telegram", "-1001", "family", "--pattern", "("),
        ]

    created, wired, listed, ghost, bad_pattern = await asyncio.to_thread(session)
    assert created.returncode == 0 and "created agent group family" in created.stdout, created.stderr
    assert wired.returncode == 0 and "mention-sticky" in wired.stdout, wired.stderr
    assert {(w["chat_id"], w["agent_group"]) for w in json.loads(listed.stdout)} == {("*", "main"), ("-1001", "family")}
    assert ghost.returncode == 1
    assert ghost.stderr.strip() == "clawden: no agent group named 'ghost' (see `clawden groups list`)"
    assert bad_pattern.returncode == 1 and "is not a regular expression" in bad_pattern.stderr
    assert "Traceback" not in ghost.stderr + bad_pattern.stderr


async def test_a_message_too_large_to_wake_an_agent_with_is_refused_and_its_chat_goes_on(
    router: RouterProcess, js: JetStreamContext
) -> None:
    # NATS takes at most 1 MiB a message: a wake past it would never leave the outbox, and hold up its session.
    await router.ask(router_ctl.GROUPS_CREATE, router_ctl.GroupCreate(name="poet", starter_memory="Haiku. " * 4600))
    await router.ask(router_ctl.CHATS_CREATE, router_ctl.ChatCreate(channel="telegram", chat_id="c1", policy="public"))
    await router.ask(
        router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="telegram", chat_id="c1", agent_group="poet")
    )
    await send(js, too_large_with_its_agents_settings())
    await send(js, chat_message(2, chat="c1", text="and a short one"))

    [wake] = await collect(js, "t-wakes", WAKES, want=1, timeout=20)
    assert isinstance(wake, ev.Wake) and wake.message.text == "and a short one"
    [told] = await collect(js, "t-out", subjects.outbound("telegram", "c1"), want=1, timeout=20)
    assert isinstance(told, ev.OutboundMessage) and told.kind == "error" and "too large" in told.text
    [dropped] = await router.ask(router_ctl.DROPPED_LIST, router_ctl.DroppedList())
    assert dropped.key == "telegram:m1" and dropped.reason.startswith("too large to pass on to an agent")


async def test_a_message_that_comes_while_router_db_cannot_be_written_waits_for_it_and_is_routed_once(
    router: RouterProcess, js: JetStreamContext
) -> None:
    # Another process holds router.db's write lock past the router's busy timeout (a backup, a full disk would do
    # the same): no fault of the message's, so it must not spend its deliveries (JetStream gives up after 20).
    holder = sqlite3.connect(router.config.data_dir / "router.db", isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        await send(js, chat_message(1, chat="terminal", channel="local", sender="local:someone"))
        failed = re.compile(r"router\.db (cannot be written|step route_batch failed)")
        await eventually(lambda: len(failed.findall(router.output())) >= 2, timeout=60, message=router.output)
        info = await js.consumer_info("CLAWDEN_INBOUND", "router")
        assert (info.num_redelivered, info.num_ack_pending) == (0, 1), router.output()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    [wake] = await collect(js, "t-wakes", WAKES, want=1)
    assert isinstance(wake, ev.Wake) and wake.message.id.startswith("local:m1")
    info = await js.consumer_info("CLAWDEN_INBOUND", "router")
    assert (info.num_redelivered, info.num_ack_pending, info.num_pending) == (0, 0, 0)
