"""A Telegram group as Telegram really delivers it (privacy mode on, as for every new bot), through the real
bridge and router processes on real NATS: how a group reaches the agent, and what `clawden chats list` says."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from nats.js.api import Header

from clawden.bus import connect, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_ctl
from tests.channels.harness import BridgeProcess, until
from tests.fakes.telegram import FakeTelegram
from tests.router.conftest import RouterProcess, collect

WAKES = f"{subjects.PREFIX}.wake.>"


@pytest.fixture
def bridge(router: RouterProcess, fake: FakeTelegram) -> Iterator[BridgeProcess]:
    b = BridgeProcess(router.home, router.url, fake).start()
    yield b
    b.close()


def chats_list(router: RouterProcess) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clawden", "chats", "list"], env=router.env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_group_in_privacy_mode_shows_in_chats_list_once_someone_asks_with_ask_at_the_bot(
    fake: FakeTelegram, router: RouterProcess, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family")
    fake.send(family, ada, "@clawden_test_bot are you there?")  # Telegram keeps it from the bot
    listed = chats_list(router)
    assert str(family["id"]) not in listed
    assert "telegram groups: privacy mode on: in groups @clawden_test_bot gets only /ask@clawden_test_bot" in listed
    fake.send(family, ada, "/ask@clawden_test_bot are you there?")
    await until(lambda: str(family["id"]) in chats_list(router), 30, "the group never reached the router")
    [row] = [line for line in chats_list(router).splitlines() if str(family["id"]) in line]
    assert "Family" in row and "group" in row


async def test_a_group_upgraded_to_a_supergroup_mid_conversation_keeps_its_session_and_held_approvals(
    fake: FakeTelegram, router: RouterProcess, bridge: BridgeProcess
) -> None:
    ada, bob = fake.user("Ada"), fake.user("Bob")
    family = fake.group("Family", supergroup=False)  # a basic group: an admin's change will upgrade it
    old_id = str(family["id"])
    await router.ask(
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(
            channel="telegram", chat_id=old_id, name="Family", is_group=True, policy="request_approval"
        ),
    )
    await router.ask(
        router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="telegram", chat_id=old_id, agent_group="main")
    )
    await router.ask(router_ctl.MEMBERS_ADD, router_ctl.MemberAdd(agent_group="main", user_id=f"telegram:{ada['id']}"))
    [owner] = [r.user_id for r in await router.ask(router_ctl.ROLES_LIST, router_ctl.ListAll())]
    nc = await connect(router.url, "test")
    js = nc.jetstream()
    try:
        fake.send(family, ada, "/ask@clawden_test_bot what shall we cook?")
        fake.send(family, bob, "/ask@clawden_test_bot may I join?")  # a stranger: held until the owner says yes
        [first] = await collect(js, "t-wakes", WAKES, want=1)
        [request] = await collect(js, "t-requests", subjects.APPROVAL_REQUEST, want=1)
        assert isinstance(first, ev.Wake) and isinstance(request, ev.ApprovalRequest)

        supergroup = fake.migrate(family, by=ada)
        new_id = str(supergroup["id"])
        fake.send(supergroup, ada, "/ask@clawden_test_bot and for dessert?")
        [second] = await collect(js, "t-wakes", WAKES, want=1)
        assert isinstance(second, ev.Wake)
        assert (second.session_id, second.route.chat_id, second.message.text) == (
            first.session_id,
            new_id,
            "and for dessert?",
        )

        decision = ev.ApprovalDecision(id=request.id, decision="approved", decided_by=owner)
        await js.publish(
            subjects.approval_decision(request.id), ev.encode(decision), headers={Header.MSG_ID: f"{request.id}:yes"}
        )
        [third] = await collect(js, "t-wakes", WAKES, want=1)
        assert isinstance(third, ev.Wake)
        assert (third.session_id, third.route.chat_id, third.message.text) == (first.session_id, new_id, "may I join?")
        # The move was announced once (both service messages and the bridge name it; one move happened).
        announced = await js.pull_subscribe(subjects.event("router", "chat_moved"), stream="CLAWDEN_EVENTS")
        moves = [ev.decode(m.data) for m in await announced.fetch(10, timeout=2)]
        assert [(m.old_chat_id, m.new_chat_id) for m in moves if isinstance(m, ev.ChatMoved)] == [(old_id, new_id)]
    finally:
        await nc.close()
    listed = chats_list(router)
    assert new_id in listed and old_id not in listed


async def test_an_anonymous_admin_and_a_channel_are_answered_not_dropped_as_bots(
    fake: FakeTelegram, router: RouterProcess, bridge: BridgeProcess
) -> None:
    ada = fake.user("Ada")
    family = fake.group("Family")
    news = fake.channel("Family News")
    await router.ask(
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(
            channel="telegram", chat_id=str(family["id"]), name="Family", is_group=True, policy="public"
        ),
    )
    await router.ask(
        router_ctl.WIRINGS_CREATE,
        router_ctl.WiringCreate(channel="telegram", chat_id=str(family["id"]), agent_group="main"),
    )
    nc = await connect(router.url, "test")
    try:
        fake.send(family, ada, "/ask@clawden_test_bot who cooks tonight?", as_chat=family)  # an anonymous admin
        fake.send(family, ada, "/ask@clawden_test_bot any news?", as_chat=news)  # Ada posting as the channel
        wakes = await collect(nc.jetstream(), "t-wakes", WAKES, want=2)
    finally:
        await nc.close()
    assert sorted(
        (w.message.sender.id, w.message.text) for w in wakes if isinstance(w, ev.Wake) and w.message.sender is not None
    ) == [(f"telegram:chat:{family['id']}", "who cooks tonight?"), (f"telegram:chat:{news['id']}", "any news?")]
