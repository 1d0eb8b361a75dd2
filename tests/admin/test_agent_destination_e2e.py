"""`clawden destinations add --agent` and the channel check, run by the agent in a real container: a group
agent's agent destination for its own group waits for an admin and is made on approval, one for another group
is refused, and a wiring on a channel no bridge serves is refused before any admin is asked; each is audited."""

from __future__ import annotations

import asyncio

import pytest

from clawden import config as config_mod
from clawden import control
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_api
from tests.admin.test_agent_cli import OWNER, Audit, audit, other_group, reply_with, run_cli, term
from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_credential_approval import button, card_for, click
from tests.eventually import eventually

pytestmark = pytest.mark.docker
__all__ = ["audit", "other_group", "term"]  # fixtures


async def test_an_agent_destination_of_its_own_group_is_made_once_an_admin_approves(
    stack: Stack, term: Terminal, audit: Audit
) -> None:
    cfg = config_mod.load(stack.home)
    asked = await asyncio.to_thread(run_cli, stack, "destinations", "add", ".", "--agent", "ops", "--max-hops", "3")
    assert "approval pending" in str(asked["out"]), asked
    card = await card_for(term)
    assert card.card is not None
    assert "clawden destinations add main ops --agent ops --max-hops 3" in card.card.body
    assert "to agent group ops, whose agent would answer back (at most 3 " in card.card.body
    assert await control.ask(cfg, router_api.DESTINATIONS_LIST, router_api.GroupFilter(agent_group="main")) == []

    await click(term, card, button(card, approve=True), OWNER)

    # the outcome names the command as the agent typed it (its own group as ".")
    await reply_with(term, "`clawden destinations add . ops --agent ops --max-hops 3` was approved by")
    [made] = await control.ask(cfg, router_api.DESTINATIONS_LIST, router_api.GroupFilter(agent_group="main"))
    assert (made.name, made.channel, made.chat_id, made.max_hops) == ("ops", ev.AGENT_CHANNEL, "ops", 3)
    await eventually(lambda: audit.outcomes(agent_group="main") == ["asked", "done"])


async def test_another_groups_agent_destination_and_an_unknown_channel_are_refused_and_audited(
    stack: Stack, term: Terminal, audit: Audit
) -> None:
    theirs = await asyncio.to_thread(run_cli, stack, "destinations", "add", "ops", "--agent", "main")
    typo = await asyncio.to_thread(run_cli, stack, "wire", "add", "telegarm", "room-1", "main")
    chat = await asyncio.to_thread(run_cli, stack, "destinations", "add", "main", "mum", "smoke-signal", "hill")

    assert theirs["code"] == 1 and "may only see and change its own group, not ops" in str(theirs["err"])
    assert typo["code"] == 1 and "no channel telegarm; the channels are: " in str(typo["err"])
    assert "local" in str(typo["err"]) and chat["code"] == 1 and "no channel smoke-signal" in str(chat["err"])
    await eventually(lambda: audit.outcomes(agent_group="main") == ["refused"] * 3, message=lambda: audit.events)
    cfg = config_mod.load(stack.home)
    assert await control.ask(cfg, router_api.WIRINGS_LIST, router_api.WiringList(chat_id="room-1")) == []
    assert await control.ask(cfg, router_api.DESTINATIONS_LIST, router_api.GroupFilter(agent_group="ops")) == []
