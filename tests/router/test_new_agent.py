"""A "new agent" choice on the card the router sends for a chat no agent group answers: the owner presses it,
is asked for a name in their own chat, answers `/newagent NAME`, and the group is made (its starter CLAUDE.md kept
with it, sent with its wakes, and written into the router's groups folder) and wired to the chat in one step, the
held message replayed into it; redelivered decisions and messages change nothing more. The real router process on
real NATS. A group made by the control verb (create_agent's) keeps the starter memory it was given the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.api import Header

from clawden.bus import ctl, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl.verb import BadRequest
from services.router import cards
from services.router.control import Control
from services.router.store import RouterStore
from tests.router.conftest import RouterProcess, collect
from tests.router.test_service import WAKES, chat_message, send


async def decide(js: JetStreamContext, approval_id: str, by: str, value: str, msg_id: str) -> None:
    decision = ev.ApprovalDecision(id=approval_id, decision="approved", decided_by=by, value=value)
    await js.publish(subjects.approval_decision(approval_id), ev.encode(decision), headers={Header.MSG_ID: msg_id})


def asked_for_a_name(
    store: RouterStore, owner: str, chat: str = "c9", at: float = 1_200.0
) -> tuple[ev.InboundMessage, str]:
    """A stranger's first message in an unwired chat, held; `owner` pressed "New agent…" on its card (at `at`), so
    their next `/newagent NAME` names the group. The held message and the approval's id."""
    hello = ev.InboundMessage(
        route=ev.Route(channel="telegram", chat_id=chat),
        message_id=f"m-{chat}",
        sender=ev.Sender(id="bob"),
        text="hello there",
        sent_at=1_100.0,
    )
    store.route_batch([hello], 1_100.0)
    [(approval,)] = store.conn.execute(
        "SELECT a.id FROM approvals a JOIN messaging_groups m ON m.id = a.messaging_group"
        " WHERE a.kind = 'channel' AND m.chat_id = ?",
        (chat,),
    ).fetchall()
    store.on_decision(
        ev.ApprovalDecision(id=approval, decision="approved", decided_by=owner, value=cards.NEW_AGENT), at
    )
    return hello, str(approval)


async def test_the_owner_names_a_new_agent_and_the_chat_is_connected_to_it_once(
    router: RouterProcess, js: JetStreamContext
) -> None:
    [owner] = [r.user_id for r in await router.ask(router_ctl.ROLES_LIST, router_ctl.ListAll()) if r.role == "owner"]
    await send(js, chat_message(1, chat="c9", text="hello there", sender="telegram:alice"))
    [request] = await collect(js, "t-requests", subjects.APPROVAL_REQUEST, want=1)
    assert isinstance(request, ev.ApprovalRequest) and request.kind == "channel"
    assert [b.id for b in request.card.buttons] == ["connect:main", cards.NEW_AGENT, cards.DENY]

    await decide(js, request.id, "telegram:alice", cards.NEW_AGENT, "d0")  # not an owner: not carried out
    await decide(js, request.id, owner, cards.NEW_AGENT, "d1")
    await decide(js, request.id, owner, cards.NEW_AGENT, "d2")  # redelivered past the dedupe: asked once
    sent = await collect(js, "t-requests-2", subjects.APPROVAL_REQUEST, want=5, settle=1.5)
    [_, again, amended, told, ask] = [r for r in sent if isinstance(r, ev.ApprovalRequest)]
    assert again.id == cards.again_id(request.id) and again.approvers == (owner,)  # asked again, of the owner
    assert amended.amends == request.id  # the card alice pressed says it was not carried out
    assert told.approvers == ("telegram:alice",) and "only a global admin or an owner may make a new agent" in (
        told.card.body
    )
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
    waits = " Nothing was created; chat c9 on telegram still waits for a name."
    assert texts[0] == f"An agent's name is one word ({RULE}). /newagent not-a-name would name it not-a-name.{waits}"
    assert texts[1] == f"An agent group named main exists already: /newagent another name.{waits}"
    assert texts[2] == "Created agent group research (folder groups/research) and connected chat c9 on telegram to it."
    wakes = [w for w in await collect(js, "t-wakes", WAKES, want=2) if isinstance(w, ev.Wake)]
    assert sorted((w.agent_group, w.message.text) for w in wakes) == [
        ("main", "/newagent other"),
        ("research", "hello there"),
    ]
    # The starter memory goes with the group's settings, so a runner on another host can write it there.
    by_group = {w.agent_group: w.group for w in wakes}
    assert by_group["research"] is not None and by_group["main"] is not None
    assert by_group["research"].starter_memory == cards.starter_memory("research", "chat c9 on telegram")
    assert by_group["main"].starter_memory == ""

    groups = [g.name for g in await router.ask(router_ctl.GROUPS_LIST, router_ctl.ListAll())]
    assert sorted(groups) == ["main", "research"]
    [wiring] = await router.ask(router_ctl.WIRINGS_LIST, router_ctl.WiringList(chat_id="c9"))
    assert (wiring.channel, wiring.agent_group) == ("telegram", "research")
    memory = router.config.groups_dir / "research" / "CLAUDE.md"  # at once too, for the owner to open
    assert memory.read_text() == by_group["research"].starter_memory
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
        ("/newagent  research \n", "research"),
        ("/newagent two words", "two words"),  # said as given: the reply says a name is one word
        ("newagent research", None),
        ("/web", None),
    ],
)
def test_newagent_parses_one_name(text: str, name: str | None) -> None:
    assert cards.named(text) == name


FOLDERS = {"main": "main", "sales": "research"}  # sales keeps its memory in groups/research
RULE = "lowercase letters, digits, - and _, at most 40, starting with a letter or digit"
ONE_WORD = f"An agent's name is one word ({RULE})."
TAKEN = "An agent group named main exists already: /newagent another name."


@pytest.mark.parametrize(
    ("given", "reply"),
    [
        ("ops", ""),
        ("", f"Give the new agent a name: /newagent NAME ({RULE})."),
        ("My Agent!", f"{ONE_WORD} /newagent my-agent would name it my-agent."),
        ("Main Agent", f"{ONE_WORD} /newagent main-agent would name it main-agent."),
        ("sales team", f"{ONE_WORD} /newagent sales-team would name it sales-team."),
        ("! ?", ONE_WORD),  # nothing to make of it
        ("Main !", ONE_WORD),  # main is taken: no suggestion that would be refused in turn
        ("Ops", "Agent group names are lowercase: /newagent ops would name it ops."),
        ("Main", f"Agent group names are lowercase, so that is main. {TAKEN}"),
        ("../etc", f"../etc cannot name an agent group: give a name of {RULE}."),
        ("x" * 41, f"{'x' * 41} cannot name an agent group: give a name of {RULE}."),
        ("main", TAKEN),
        ("global", "global is the folder of the memory every agent group shares: /newagent another name."),
        ("research", "Agent group sales keeps its memory in the folder research: /newagent another name."),
    ],
)
def test_each_newagent_that_makes_no_group_is_told_why_and_what_to_send(given: str, reply: str) -> None:
    waits = " Nothing was created; chat c9 on telegram still waits for a name."
    assert cards.name_problem(given, "chat c9 on telegram", FOLDERS) == (f"{reply}{waits}" if reply else "")


def _wake_in(store: RouterStore, chat: str) -> ev.Wake:
    message = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id=chat),
        message_id=chat,
        sender=ev.Sender(id="local:alice"),
        text="hi",
        sent_at=1_900.0,
    )
    outcome = store.route_batch([message], 2_000.0)
    [wake] = [e for e in map(ev.decode, (o.payload for o in outcome.outgoing)) if isinstance(e, ev.Wake)]
    return wake


def _create(control: Control, **payload: Any) -> None:
    verb, request = ctl.Subject("router", "groups").decode(msgspec.json.encode({"op": "create"} | payload))
    control.handle(verb, request)


def test_a_group_created_with_starter_memory_sends_it_with_its_wakes(tmp_path: Path) -> None:
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1_000.0)
    control = Control(store, clock=lambda: 1_500.0)
    _create(control, name="poet", starter_memory="You write haiku.")
    wire = router_ctl.WiringCreate(channel="local", chat_id="verses", agent_group="poet")
    control.handle(router_ctl.WIRINGS_CREATE, wire)
    wake = _wake_in(store, "verses")
    assert (wake.agent_group, wake.group and wake.group.starter_memory) == ("poet", "You write haiku.")
    assert (RouterStore.open(tmp_path / "router.db").group_settings("poet") or ev.GroupSettings()).starter_memory == (
        "You write haiku."
    )  # kept in router.db, not only in the store's cache
    too_long = "x" * (router_ctl.MAX_STARTER_MEMORY + 1)
    with pytest.raises(BadRequest, match=r"length <= 32768 - at `\$\.starter_memory`"):
        _create(control, name="epic", starter_memory=too_long)


def test_a_starter_memory_the_router_cannot_write_on_its_host_loses_neither_the_group_nor_the_memory(
    tmp_path: Path,
) -> None:
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1_000.0)
    store.groups_dir = tmp_path / "groups"
    store.groups_dir.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (store.groups_dir / "research").symlink_to(tmp_path / "elsewhere")  # never written through
    hello, _ = asked_for_a_name(store, "local:alice")
    name = msgspec.structs.replace(
        hello, route=ev.Route(channel="local", chat_id="term"), message_id="m2", sender=ev.Sender(id="alice")
    )
    outcome = store.route_batch([msgspec.structs.replace(name, text="/newagent research")], 1_300.0)
    wakes = [e for e in map(ev.decode, (o.payload for o in outcome.outgoing)) if isinstance(e, ev.Wake)]
    assert [(w.agent_group, w.message.text) for w in wakes] == [("research", "hello there")]
    assert wakes[0].group is not None and "You are the research agent" in wakes[0].group.starter_memory
    assert not (tmp_path / "elsewhere" / "CLAUDE.md").exists()


def test_a_refused_newagent_from_the_owners_address_creates_nothing_and_is_recorded_dropped(tmp_path: Path) -> None:
    # A forged mail "from" the owner, who was asked for a name: the bridge refused it (it failed DKIM).
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1_000.0)
    owner = "email:me@example.org"
    store.grant(owner, "owner", "", "test", 1_000.0)
    _, approval = asked_for_a_name(store, owner)
    store.published([o.id for o in store.outgoing()])
    forged = ev.InboundMessage(
        route=ev.Route(channel="email", chat_id="thread-1"),
        message_id="<x@evil.example>",
        sender=ev.Sender(id=owner),
        text="/newagent evil",
        sent_at=1_300.0,
        refused="unverified sender: dkim=fail",
    )
    outcome = store.route_batch([forged], 1_300.0)
    assert [e for e in map(ev.decode, (o.payload for o in outcome.outgoing))] == []  # no group, no answer
    assert [r[0] for r in store.conn.execute("SELECT name FROM agent_groups")] == ["main"]
    assert store.conn.execute("SELECT reason FROM dropped_messages WHERE key = ?", (forged.key,)).fetchone()[0] == (
        "unverified sender: dkim=fail"
    )
    # the owner's question stays open: their own `/newagent` still names the agent
    assert store.conn.execute("SELECT naming_by FROM approvals WHERE id = ?", (approval,)).fetchone()[0] == owner


def _owner_says(store: RouterStore, text: str, n: int) -> list[ev.Event]:
    said = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id="term"), message_id=f"o{n}", sender=ev.Sender(id="alice"), text=text,
        sent_at=1_300.0 + n,
    )  # fmt: skip
    outcome = store.route_batch([said], 1_300.0 + n)
    store.published([o.id for o in outcome.outgoing])
    return [ev.decode(o.payload) for o in outcome.outgoing]


def _replies(sent: list[ev.Event]) -> list[str]:
    return [e.text for e in sent if isinstance(e, ev.OutboundMessage) and e.route.chat_id == "term"]


def _groups(store: RouterStore) -> list[str]:
    return [r[0] for r in store.conn.execute("SELECT name FROM agent_groups ORDER BY name")]


def test_newagent_global_is_refused_and_the_memory_every_group_shares_is_left_alone(tmp_path: Path) -> None:
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1_000.0)
    store.groups_dir = tmp_path / "groups"
    store.groups_dir.mkdir()
    asked_for_a_name(store, "local:alice")
    [reply] = _replies(_owner_says(store, "/newagent global", 1))
    assert reply.startswith("global is the folder of the memory every agent group shares: /newagent another name.")
    assert _groups(store) == ["main"] and not (store.groups_dir / "global").exists()


def test_newagent_names_the_chat_the_owner_was_asked_about_last_and_says_which_still_wait(tmp_path: Path) -> None:
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1_000.0)
    store.groups_dir = tmp_path / "groups"
    (store.groups_dir / "beta").mkdir(parents=True)
    (store.groups_dir / "beta" / "CLAUDE.md").write_text("left by a group deleted long ago")
    asked_for_a_name(store, "local:alice", chat="c2", at=1_200.0)  # c2 knocked last, but was asked about first
    asked_for_a_name(store, "local:alice", chat="c1", at=1_250.0)  # the name asked for last: c1's
    first = _owner_says(store, "/newagent alpha", 1)
    assert _replies(first) == [
        "Created agent group alpha (folder groups/alpha) and connected chat c1 on telegram to it. Still waiting for a"
        " name: chat c2 on telegram (/newagent NAME names chat c2 on telegram next)."
    ]
    assert [(w.agent_group, w.route.chat_id) for w in first if isinstance(w, ev.Wake)] == [("alpha", "c1")]
    second = _owner_says(store, "/newagent beta", 2)
    assert _replies(second) == [
        "Created agent group beta (folder groups/beta) and connected chat c2 on telegram to it. Its folder had a"
        " CLAUDE.md already, which is kept."
    ]
    assert [(w.agent_group, w.route.chat_id) for w in second if isinstance(w, ev.Wake)] == [("beta", "c2")]


def test_newagent_from_someone_no_longer_an_admin_makes_no_group(tmp_path: Path) -> None:
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1_000.0)
    control = Control(store, clock=lambda: 1_150.0)

    def roles(op: str) -> None:
        verb, request = ctl.Subject("router", "roles").decode(
            msgspec.json.encode({"op": op, "user_id": "local:carol", "role": "admin"})
        )
        control.handle(verb, request)

    roles("grant")  # a global admin presses New agent…, and is no longer one when the name comes
    asked_for_a_name(store, "local:carol")
    roles("revoke")
    said = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id="term"), message_id="c1", sender=ev.Sender(id="carol"),
        text="/newagent research", sent_at=1_301.0,
    )  # fmt: skip
    sent = [ev.decode(o.payload) for o in store.route_batch([said], 1_301.0).outgoing]
    assert _replies(sent) == [cards.NO_LONGER_MAY_NAME]
    assert _groups(store) == ["main"] and not [e for e in sent if isinstance(e, ev.Wake)]


def test_a_group_created_without_starter_memory_gets_the_starter(tmp_path: Path) -> None:
    """`clawden groups create family` gives the group a CLAUDE.md, as `/newagent` and `clawden init` do: kept with the
    group, which its runner writes at the group's first container where the folder has none."""
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1_000.0)
    control = Control(store, clock=lambda: 1_500.0)
    _create(control, name="family")
    memory = (store.group_settings("family") or ev.GroupSettings()).starter_memory
    assert (
        memory == cards.starter_memory("family") and "You are the family agent on your owner's home server." in memory
    )
