"""The whole system: a terminal chat no agent group answers asks the owner, who presses "New agent…", names it
with /newagent, and the new agent group's real container answers the waiting message in that chat."""

from __future__ import annotations

import getpass

import pytest

from clawden import config as config_mod
from clawden import control
from clawden.bus.ctl import router as router_api
from services.router import cards
from tests.e2e.conftest import stack
from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_credential_approval import card_for, click

pytestmark = pytest.mark.docker
__all__ = ["stack"]  # the fixture
OWNER = f"local:{getpass.getuser()}"


async def test_a_new_agent_made_from_the_card_answers_in_its_chat(stack: Stack) -> None:
    cfg = config_mod.load(stack.home)
    # No wildcard: each terminal chat waits for the owner to connect it. The owner's cards come to the chat
    # they last wrote in (services/approvals/policy.py direct_chat): here the new chat itself.
    await control.ask(
        cfg, router_api.WIRINGS_DELETE, router_api.WiringDelete(channel="local", chat_id="*", agent_group="main")
    )
    async with Terminal(stack, "lab") as lab:
        await lab.send("hello lab")
        card = await card_for(lab)
        assert card.card is not None and card.card.title == "Connect a new chat?"
        await click(lab, card, cards.NEW_AGENT, OWNER)
        while "Reply with /newagent NAME" not in (asked := await lab.reply()).text:
            pass
        assert "chat lab on local" in asked.text
        await lab.send("/newagent lab")
        while not (done := await lab.reply()).text.startswith("Created agent group lab"):
            pass
        assert "(chat lab on local)" in done.text
        answer = await lab.reply(timeout=120)  # the held message, answered by the new group's container
        assert answer.agent_group == "lab" and "hello lab" in answer.text
    assert (cfg.groups_dir / "lab" / "CLAUDE.md").read_text().startswith("# lab")
    [wiring] = await control.ask(cfg, router_api.WIRINGS_LIST, router_api.WiringList(chat_id="lab"))
    assert wiring.agent_group == "lab"
    containers = [c.labels.get("dev.clawden.agent-group") for c in stack.containers()]
    assert "lab" in containers
