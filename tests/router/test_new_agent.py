"""A "new agent" choice on the card the router sends for a chat no agent group answers: the owner presses it,
is asked for a name in their own chat, answers `/newagent NAME`, and the group is made (its folder and starter
CLAUDE.md) and wired to the chat in one step, the held message replayed into it; redelivered decisions and
messages change nothing more. The real router process on real NATS."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext
from nats.js.api import Header

from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import router as router_ctl
from services.router import cards
from tests.router.conftest import RouterProcess, collect
from tests.router.test_service import WAKES, chat_message, send


async def decide(js: JetStreamContext, approval_id: str, by: str, value: str, msg_id: str) -> None:
    decision = ev.ApprovalDecision(id=approval_id, decision="approved", decided_by=by, value=value)
    await js.publish(subjects.approval_decision(approval_id), ev.encode(decision), headers={Header.MSG_ID: msg_id})


async def test_the_owner_names_a_new_agent_and_the_chat_is_connected_to_it_once(
    router: RouterProcess, js: JetStreamContext
) -> None:
    [owner] = [r.user_id for r in await router.ask(router_ctl.ROLES_LIST, router_ctl.ListAll()) if r.role == "owner"]
    await send(js, chat_message(1, chat="c9", text="hello there", sender="telegram:alice"))
    [request] = await collect(js, "t-requests", subjects.APPROVAL_REQUEST, want=1)
    assert isinstance(request, ev.ApprovalRequest) and request.kind == "channel"
    assert [b.id for b in request.card.buttons] == ["connect:main", cards.NEW_AGENT, cards.DENY]

    await decide(js, request.id, "telegram:alice", cards.NEW_AGENT, "d0")  # not an owner: nothing happens
    await decide(js, request.id, owner, cards.NEW_AGENT, "d1")
    await decide(js, request.id, owner, cards.NEW_AGENT, "d2")  # redelivered past the dedupe: asked once
    [_, ask] = await collect(js, "t-requests-2", subjects.APPROVAL_REQUEST, want=2, settle=1.5)
    assert isinstance(ask, ev.ApprovalRequest) and ask.id == f"{request.id}{cards.NAMING_SUFFIX}"
    assert ask.approvers == (owner,) and ask.card.buttons == ()  # a notice in the owner's chat
    assert "/newagent NAME" in ask.card.body and "chat c9 on telegram" in ask.card.body

    def says(n: int, text: str) -> ev.InboundMessage:
        return chat_message(n, chat="terminal", channel="local", text=text, sender=owner)

    await send(js, says(2, "/newagent Not A Name"))
    await send(js, says(3, "/newagent main"))
    await send(js, says(4, "/newagent research"))
    await send(js, says(4, "/newagent research"), "again")  # a bridge's redelivery: the router's key catches it
    await send(js, says(5, "/newagent other"))  # nobody asked any more: plain text to main

    replies = await collect(js, "t-out", subjects.outbound("local", "terminal"), want=3)
    texts = [r.text for r in replies if isinstance(r, ev.OutboundMessage)]
    assert texts[0].startswith("Give the new agent a name: /newagent NAME")
    assert texts[1] == "An agent group or folder named main exists already: /newagent another name."
    assert texts[2] == "Created agent group research (folder groups/research) and connected chat c9 on telegram to it."
    wakes = [w for w in await collect(js, "t-wakes", WAKES, want=2) if isinstance(w, ev.Wake)]
    assert sorted((w.agent_group, w.message.text) for w in wakes) == [
        ("main", "/newagent other"),
        ("research", "hello there"),
    ]

    groups = [g.name for g in await router.ask(router_ctl.GROUPS_LIST, router_ctl.ListAll())]
    assert sorted(groups) == ["main", "research"]
    [wiring] = await router.ask(router_ctl.WIRINGS_LIST, router_ctl.WiringList(chat_id="c9"))
    assert (wiring.channel, wiring.agent_group) == ("telegram", "research")
    memory = router.config.groups_dir / "research" / "CLAUDE.md"
    assert "You are the research agent" in memory.read_text() and "chat c9 on telegram" in memory.read_text()
    members = await router.ask(router_ctl.MEMBERS_LIST, router_ctl.GroupFilter(agent_group="research"))
    assert [m.user_id for m in members] == ["telegram:alice"]  # a direct chat: its one other person


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("/newagent research", "research"),
        ("/newagent@ClawdenBot research", "research"),
        ("/NEWAGENT research", "research"),
        ("/newagent", ""),
        ("/newagent two words", ""),
        ("newagent research", None),
        ("/web", None),
    ],
)
def test_newagent_parses_one_name(text: str, name: str | None) -> None:
    assert cards.named(text) == name


@pytest.mark.parametrize(
    ("name", "taken", "problem"),
    [
        ("research", False, ""),
        ("research", True, "exists already"),
        ("", False, "Give the new agent a name"),
        ("Research", False, "Give the new agent a name"),
        ("../etc", False, "Give the new agent a name"),
        ("x" * 41, False, "Give the new agent a name"),
    ],
)
def test_a_new_agents_name_must_be_a_free_group_name(name: str, taken: bool, problem: str) -> None:
    found = cards.name_problem(name, taken=taken)
    assert (problem in found) if problem else found == ""
