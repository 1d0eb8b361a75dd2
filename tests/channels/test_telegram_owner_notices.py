"""What the owner hears about Telegram on its own, through the real bridge and router processes on real NATS
and the fake Bot API: messages Telegram dropped while the bridge was away longer than it keeps them."""

from __future__ import annotations

import pytest

from clawden.bus.ctl import router as router_ctl
from tests.channels.harness import BridgeProcess, until
from tests.fakes.telegram import Clock, FakeTelegram
from tests.router.conftest import RouterProcess


@pytest.mark.fake(clock=Clock())
async def test_messages_telegram_dropped_during_a_day_long_outage_are_told_to_the_owner_once(
    fake: FakeTelegram, router: RouterProcess
) -> None:
    clock = fake.clock
    assert isinstance(clock, Clock)
    ada = fake.user("Ada")
    chat = fake.private_chat(ada)
    await router.ask(router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=f"telegram:{ada['id']}", role="owner"))
    bridge = BridgeProcess(router.home, router.url, fake).start()
    try:
        fake.send(chat, ada, "before")
        await until(lambda: fake.confirmed_offset > 0, 15, "the first message was never fetched")
        assert bridge.stop() == 0
        fake.send(chat, ada, "are you there?")
        fake.send(chat, ada, "hello?")
        clock.advance(25 * 3600)  # Telegram has dropped both by now
        fake.send(chat, ada, "a day later")
        bridge.start()

        def notices() -> list[str]:
            return [t for t in fake.texts(chat) if "never reached me" in t]

        await until(lambda: len(notices()) == 1, 30, lambda: bridge.output() + router.output())
        assert bridge.stop() == 0  # a restart finds no gap again: the cursor moved past it
        bridge.start()
        fake.send(chat, ada, "still there?")
        await until(lambda: fake.pending_updates == 0, 15, "the bridge stopped fetching")
    finally:
        bridge.close()
    [notice] = notices()
    assert notice.startswith("⚠️ 2 messages sent on telegram since ")
    assert "Telegram keeps messages for a bot 24 hours" in notice and "who sent them is unknown" in notice
