"""Topics in a private chat with the bot (Bot API 9.3) through the real bridge and router processes on real NATS
and the fake Bot API: each topic is a conversation of its own, as in a forum supergroup."""

from __future__ import annotations

import pytest

from clawden.bus import connect, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_ctl
from tests.channels.harness import BridgeProcess
from tests.fakes.telegram import FakeTelegram
from tests.router.conftest import RouterProcess, collect


@pytest.mark.fake(private_topics=True)
async def test_each_topic_of_a_private_chat_is_its_own_session_and_the_chat_outside_them_another(
    fake: FakeTelegram, router: RouterProcess
) -> None:
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    trip, food = fake.topic(chat, ada, "Trip"), fake.topic(chat, ada, "Groceries")
    await router.ask(router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=f"telegram:{ada['id']}", role="owner"))
    await router.ask(
        router_ctl.CHATS_CREATE, router_ctl.ChatCreate(channel="telegram", chat_id=str(chat["id"]), name="Ada")
    )
    await router.ask(
        router_ctl.WIRINGS_CREATE,
        router_ctl.WiringCreate(channel="telegram", chat_id=str(chat["id"]), agent_group="main"),
    )
    bridge = BridgeProcess(router.home, router.url, fake).start()
    nc = await connect(router.url, "test")
    try:
        fake.send(chat, ada, "book the train", thread_id=trip)
        fake.send(chat, ada, "we need milk", thread_id=food)
        fake.send(chat, ada, "and a hotel", thread_id=trip)
        fake.send(chat, ada, "hello outside any topic")
        wakes = await collect(nc.jetstream(), "t-wakes", f"{subjects.PREFIX}.wake.>", want=4)
    finally:
        await nc.close()
        bridge.close()
    session = {w.message.text: (w.session_id, w.route.thread_id) for w in wakes if isinstance(w, ev.Wake)}
    assert session["book the train"] == session["and a hotel"]
    assert session["book the train"][1] == str(trip) and session["we need milk"][1] == str(food)
    assert len({session[text][0] for text in session}) == 3  # trip, groceries, and the chat itself
    assert session["hello outside any topic"][1] is None
