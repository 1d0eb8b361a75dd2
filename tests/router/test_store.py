"""router.db with real SQLite files: seeding, migration, routing effects, approvals, idempotence."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clawden.bus import ctl
from clawden.bus import events as ev
from services.router import cards, engage, pairing
from services.router.control import Control
from services.router.schema import MIGRATIONS
from services.router.store import MAX_HELD, Outcome, RouterStore

OWNER = "local:alice"
NOW = 1_000.0


@pytest.fixture
def store(tmp_path: Path) -> RouterStore:
    s = RouterStore.open(tmp_path / "router.db")
    s.seed("main", "local", "alice", NOW)
    return s


def admin(store: RouterStore, resource: str, **payload: object) -> Any:
    verb, request = ctl.Subject("router", resource).decode(msgspec.json.encode(payload))
    return msgspec.to_builtins(Control(store, clock=lambda: NOW).handle(verb, request))


def msg(
    text: str = "hi",
    *,
    n: int = 1,
    channel: str = "telegram",
    chat: str = "c1",
    sender: str = "telegram:u1",
    group: bool = False,
    mentioned: bool = False,
) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel=channel, chat_id=chat),
        message_id=f"m{n}",
        sender=ev.Sender(id=sender, name="Ada"),
        text=text,
        sent_at=float(n),
        is_group=group,
        mentioned=mentioned,
        chat_name="family",
    )


def published(store: RouterStore, outcome: Outcome) -> list[ev.Event]:
    """Decode and clear what the outbox holds, as the adapter would after publishing."""
    store.published([o.id for o in outcome.outgoing])
    return [ev.decode(o.payload) for o in outcome.outgoing]


def wakes(events: list[ev.Event]) -> list[ev.Wake]:
    return [e for e in events if isinstance(e, ev.Wake)]


def requests(events: list[ev.Event]) -> list[ev.ApprovalRequest]:
    return [e for e in events if isinstance(e, ev.ApprovalRequest)]


def wire(store: RouterStore, chat: str = "c1", group: str = "main", policy: str = "public", **wiring: object) -> None:
    admin(store, "chats", op="create", channel="telegram", chat_id=chat, policy=policy, is_group=chat.startswith("g"))
    admin(store, "wirings", op="create", channel="telegram", chat_id=chat, agent_group=group, **wiring)


# --- first start and upgrades ----------------------------------------------------------------------


def test_first_start_wires_main_to_every_local_chat_and_makes_the_local_user_owner(store: RouterStore) -> None:
    [wake] = wakes(
        published(store, store.route_batch([msg(channel="local", chat="terminal", sender="local:bob")], NOW))
    )
    assert (wake.agent_group, wake.route.chat_id) == ("main", "terminal")
    assert store.roles.owners == [OWNER]


def test_seeding_happens_once_so_a_deleted_main_stays_deleted(tmp_path: Path, store: RouterStore) -> None:
    admin(store, "groups", op="delete", name="main")
    store.close()
    again = RouterStore.open(tmp_path / "router.db")
    assert again.seed("main", "local", "alice", NOW) == []
    assert admin(again, "groups", op="list") == []


def test_a_skeleton_database_keeps_its_groups_wirings_and_sessions(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    old = sqlite3.connect(path)
    old.executescript(
        MIGRATIONS[0][1]
        + """;
        CREATE TABLE migrations (name TEXT PRIMARY KEY, at REAL);
        INSERT INTO migrations VALUES ('0001_skeleton', 1);
        INSERT INTO agent_groups VALUES ('main', 'main', 1);
        INSERT INTO wirings VALUES ('main', 'local', '*');
        INSERT INTO sessions VALUES ('s-old', 'main', 'local', 'terminal', '', 'local', 1, 1);"""
    )
    old.close()
    store = RouterStore.open(path)
    store.seed("main", "local", "alice", NOW)
    [wake] = wakes(
        published(store, store.route_batch([msg(channel="local", chat="terminal", sender="local:alice")], NOW))
    )
    assert wake.session_id == "s-old"
    assert store.roles.owners == [OWNER]


# --- routing ---------------------------------------------------------------------------------------


def test_a_routed_message_becomes_a_wake_with_its_session_and_the_groups_destinations(store: RouterStore) -> None:
    wire(store)
    admin(store, "destinations", op="add", agent_group="main", name="family", channel="telegram", chat_id="g7")
    [first] = wakes(published(store, store.route_batch([msg(n=1)], NOW)))
    [second] = wakes(published(store, store.route_batch([msg(n=2)], NOW)))
    assert first.session_id == second.session_id
    assert first.message.id == "telegram:m1:main"
    assert first.key == f"{first.session_id}:telegram:m1:main"
    assert first.destinations == (ev.Destination(name="family", route=ev.Route(channel="telegram", chat_id="g7")),)


def test_the_same_message_is_routed_once_even_long_after_jetstreams_window(store: RouterStore) -> None:
    wire(store)
    first = store.route_batch([msg(), msg()], NOW)
    assert len(wakes(published(store, first))) == 1
    later = store.route_batch([msg()], NOW + 3 * 86400)
    assert wakes(published(store, later)) == []
    assert later.counts["duplicates"] == 1


def test_a_wake_not_yet_published_stays_in_the_outbox_and_comes_back(store: RouterStore) -> None:
    wire(store)
    store.route_batch([msg(n=1)], NOW)  # "crash" before publishing
    redelivered = store.route_batch([msg(n=1), msg(n=2)], NOW)
    assert [w.message.id for w in wakes(published(store, redelivered))] == ["telegram:m1:main", "telegram:m2:main"]
    assert store.outgoing() == []


def test_one_message_that_fails_does_not_hold_up_its_batch(store: RouterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    wire(store)
    real = engage.decide

    def flaky(message: ev.InboundMessage, view: engage.View, **kw: str | None) -> engage.Decision:
        if message.message_id == "m2":
            raise RuntimeError("bug")
        return real(message, view, **kw)

    monkeypatch.setattr(engage, "decide", flaky)
    outcome = store.route_batch([msg(n=1), msg(n=2), msg(n=3)], NOW)
    assert outcome.failed == {"telegram:m2"}
    assert [w.message.id for w in wakes(published(store, outcome))] == ["telegram:m1:main", "telegram:m3:main"]
    monkeypatch.setattr(engage, "decide", real)  # the retry of the failed one routes it
    assert len(wakes(published(store, store.route_batch([msg(n=2)], NOW)))) == 1


def too_large_with_its_agents_settings() -> ev.InboundMessage:
    """A message the bus carried (under NATS's default 1 MiB), which with a group's 32 KiB starter memory makes a
    wake the bus would not."""
    files = tuple(
        ev.Attachment(name=f"scan-{i}.pdf", url=f"https://files.example/{i}/" + "a" * 1000) for i in range(940)
    )
    big = msgspec.structs.replace(msg("see attached"), attachments=files)
    assert 1_000_000 < len(ev.encode(big)) < 1024 * 1024 - 1024
    return big


def test_a_message_whose_wake_the_bus_would_not_carry_is_refused_and_its_chat_told(store: RouterStore) -> None:
    admin(store, "groups", op="create", name="poet", starter_memory="You write haiku. " * 1900)
    wire(store, group="poet")
    out = published(store, store.route_batch([too_large_with_its_agents_settings(), msg(n=2)], NOW))
    assert [w.message.id for w in wakes(out)] == ["telegram:m2:poet"]  # the next one goes on, in the same session
    [told] = [e for e in out if isinstance(e, ev.OutboundMessage)]
    assert (told.kind, told.reply_to) == ("error", "m1") and "too large" in told.text
    [dropped] = admin(store, "dropped", op="list")
    assert dropped["key"] == "telegram:m1" and dropped["reason"].startswith("too large to pass on to an agent")
    assert store.outgoing() == []


def test_a_task_run_whose_wake_the_bus_would_not_carry_wakes_nothing_and_the_scheduler_is_told(
    store: RouterStore,
) -> None:
    wire(store)
    [wake] = wakes(published(store, store.route_batch([msg()], NOW)))
    store.max_payload = 16 * 1024  # a server that takes less than NATS's default 1 MiB
    due = ev.TaskDue(
        id="task:t-1:1", task_id="t-1", session_id=wake.session_id, agent_group="main", route=wake.route,
        text="x" * 20_000, at=NOW,
    )  # fmt: skip
    [orphaned] = published(store, store.wake_due([due], NOW))  # no wake: the scheduler pauses the task, saying why
    assert isinstance(orphaned, ev.TaskOrphaned) and orphaned.reason.startswith("too large to pass on to an agent")


def test_dropped_messages_are_recorded_with_their_reason(store: RouterStore) -> None:
    wire(store, policy="strict")
    store.route_batch([msg()], NOW)
    [dropped] = admin(store, "dropped", op="list")
    assert dropped["reason"] == "main: unknown sender (strict chat)"
    [knocked] = admin(store, "users", op="unregistered")
    assert (knocked["user_id"], knocked["chat_id"]) == ("telegram:u1", "c1")


# --- approvals -------------------------------------------------------------------------------------


def test_an_unknown_sender_is_held_and_replayed_in_order_once_an_owner_approves(store: RouterStore) -> None:
    wire(store, policy="request_approval")
    [request] = requests(published(store, store.route_batch([msg(n=1), msg(n=2)], NOW)))
    assert (request.kind, request.agent_group, request.approvers) == ("sender", "main", (OWNER,))
    approved = store.on_decision(ev.ApprovalDecision(id=request.id, decision="approved", decided_by=OWNER), NOW)
    assert [w.message.id for w in wakes(published(store, approved))] == ["telegram:m1:main", "telegram:m2:main"]
    # Now a member: the next message goes straight through.
    assert len(wakes(published(store, store.route_batch([msg(n=3)], NOW)))) == 1


def test_an_approval_clicked_by_someone_who_may_not_grant_it_changes_nothing(store: RouterStore) -> None:
    wire(store, policy="request_approval")
    [request] = requests(published(store, store.route_batch([msg()], NOW)))
    forged = store.on_decision(ev.ApprovalDecision(id=request.id, decision="approved", decided_by="telegram:u1"), NOW)
    assert wakes(published(store, forged)) == []
    assert forged.counts["decisions_refused"] == 1
    real = store.on_decision(ev.ApprovalDecision(id=request.id, decision="approved", decided_by=OWNER), NOW)
    assert len(wakes(published(store, real))) == 1


def test_a_declined_sender_is_not_asked_about_again(store: RouterStore) -> None:
    wire(store, policy="request_approval")
    [request] = requests(published(store, store.route_batch([msg(n=1)], NOW)))
    published(store, store.on_decision(ev.ApprovalDecision(id=request.id, decision="denied", decided_by=OWNER), NOW))
    again = published(store, store.route_batch([msg(n=2)], NOW))
    assert again == []
    assert {d["reason"] for d in admin(store, "dropped", op="list")} == {
        "an approver (local:alice) declined",
        "main: an approver declined this sender",
    }


def test_a_pending_approval_holds_a_bounded_number_of_messages(store: RouterStore) -> None:
    wire(store, policy="request_approval")
    outcome = store.route_batch([msg(n=i) for i in range(MAX_HELD + 5)], NOW)
    assert len(requests(published(store, outcome))) == 1
    assert outcome.counts["held"] == MAX_HELD
    assert outcome.counts["dropped"] == 5


def test_approvals_nobody_answers_expire_and_drop_what_they_held(store: RouterStore) -> None:
    wire(store, policy="request_approval")
    published(store, store.route_batch([msg()], NOW))
    assert store.expire_approvals(NOW + 86400).counts["expired"] == 0
    expired = store.expire_approvals(NOW + 8 * 86400)
    assert expired.counts["expired"] == 1
    assert [d["reason"] for d in admin(store, "dropped", op="list")] == ["nobody answered the approval request in time"]


def test_an_unwired_direct_chat_asks_the_owner_and_is_wired_to_the_chosen_group(store: RouterStore) -> None:
    admin(store, "groups", op="create", name="helper")
    [request] = requests(published(store, store.route_batch([msg(n=1), msg(n=2)], NOW)))
    assert (request.kind, request.agent_group) == ("channel", "main")
    assert [b.id for b in request.card.buttons] == ["connect:main", "connect:helper", "new-agent", "deny"]
    decided = store.on_decision(
        ev.ApprovalDecision(id=request.id, decision="approved", value="connect:helper", decided_by=OWNER), NOW
    )
    assert [w.message.id for w in wakes(published(store, decided))] == ["telegram:m1:helper", "telegram:m2:helper"]
    [wiring] = admin(store, "wirings", op="list", channel="telegram")
    assert (wiring["agent_group"], wiring["engage_mode"], wiring["sender_scope"]) == ("helper", "pattern", "known")


def test_a_declined_chat_stays_quiet(store: RouterStore) -> None:
    [request] = requests(published(store, store.route_batch([msg(n=1)], NOW)))
    published(store, store.on_decision(ev.ApprovalDecision(id=request.id, decision="denied", decided_by=OWNER), NOW))
    assert published(store, store.route_batch([msg(n=2)], NOW)) == []
    [chat] = admin(store, "chats", op="list", channel="telegram")
    assert chat["denied"] is True


def approve(store: RouterStore, approval_id: str, by: str = OWNER, value: str = "approve") -> list[ev.Event]:
    decision = ev.ApprovalDecision(id=approval_id, decision="approved", decided_by=by, value=value)
    return published(store, store.on_decision(decision, NOW))


def test_a_connection_to_an_agent_group_deleted_since_the_card_is_not_carried_out_and_asked_again(
    store: RouterStore,
) -> None:
    admin(store, "groups", op="create", name="helper")
    [request] = requests(published(store, store.route_batch([msg(n=1)], NOW)))
    admin(store, "groups", op="delete", name="helper")
    refused = approve(store, request.id, value="connect:helper")
    assert wakes(refused) == [] and admin(store, "wirings", op="list", channel="telegram") == []
    again, amended, told = requests(refused)
    # the card pressed says under its outcome that it was not done (the approvals service edits it), and their own
    # chat says so, and why
    assert (amended.amends, amended.card.body) == (
        request.id,
        "⚠️ Not carried out: there is no agent group helper any more.",
    )
    assert (told.id, told.approvers, told.card.buttons) == (f"{request.id}{cards.UNDONE_SUFFIX}", (OWNER,), ())
    assert told.card.title == "Not carried out"
    assert told.card.body == (
        "You chose Connect to helper on the card about connecting family (chat c1 on telegram), and it was not carried"
        " out: there is no agent group helper any more. Nothing was changed. A new card asks again."
    )
    # a new card, with the groups there are now, that counts for the same approval
    assert (again.id, again.kind, again.approvers) == (cards.again_id(request.id), "channel", (OWNER,))
    assert [b.id for b in again.card.buttons] == ["connect:main", "new-agent", "deny"]
    assert again.card.body.endswith(
        "Asked again: local:alice's answer (Connect to helper) was not carried out: there is no agent group helper"
        " any more."
    )
    assert [w.message.id for w in wakes(approve(store, again.id, value="connect:main"))] == ["telegram:m1:main"]


def test_a_sender_approved_by_an_admin_no_longer_is_not_carried_out_and_asked_of_those_who_may(
    store: RouterStore,
) -> None:
    wire(store, policy="request_approval")
    admin(store, "roles", op="grant", user_id="telegram:ann", role="admin", agent_group="main")
    [request] = requests(published(store, store.route_batch([msg()], NOW)))
    assert request.approvers == ("telegram:ann", OWNER)
    admin(store, "roles", op="revoke", user_id="telegram:ann", role="admin", agent_group="main")
    refused = approve(store, request.id, by="telegram:ann")
    assert wakes(refused) == []
    again, amended, told = requests(refused)
    assert amended.amends == request.id and amended.requester == cards.REQUESTER
    assert told.approvers == ("telegram:ann",) and told.context == {"channel": "telegram"}
    assert "You chose Allow on the card about telegram:u1 writing to main in chat c1 on telegram" in (told.card.body)
    assert "not carried out: only an admin of main, a global admin or an owner may approve it" in told.card.body
    assert (again.kind, again.approvers, again.card.title) == ("sender", (OWNER,), "New sender")
    assert len(wakes(approve(store, again.id))) == 1
    # delivered again after all this: said again under the same id (the approvals service keeps the first)
    [_, late] = requests(approve(store, request.id, by="telegram:ann"))
    assert late.id == told.id and "not carried out: local:alice approved it already" in late.card.body


@pytest.mark.parametrize(
    ("withdraw", "why"),
    [
        (lambda store: admin(store, "groups", op="delete", name="main"), "agent group main was deleted"),
        (lambda store: admin(store, "chats", op="delete", channel="telegram", chat_id="c1"), "the chat was deleted"),
        (
            lambda store: store.expire_approvals(NOW + 8 * 86400),
            "it had expired, and the messages it held were dropped",
        ),
    ],
)
def test_an_approval_pressed_after_the_router_dropped_it_tells_who_pressed_it_was_not_carried_out(
    store: RouterStore, withdraw: Any, why: str
) -> None:
    wire(store, policy="request_approval")
    [request] = requests(published(store, store.route_batch([msg()], NOW)))
    withdraw(store)
    store.published([o.id for o in store.outgoing()])
    [amended, told] = requests(approve(store, request.id))
    assert (amended.amends, amended.card.body) == (request.id, f"⚠️ Not carried out: {why}.")
    assert (told.id, told.approvers) == (f"{request.id}{cards.UNDONE_SUFFIX}", (OWNER,))
    assert f"and it was not carried out: {why}. Nothing was changed." in told.card.body
    # a denial there is what happened anyway, and other services' decisions are none of the router's
    denied = ev.ApprovalDecision(id=request.id, decision="denied", decided_by=OWNER)
    assert published(store, store.on_decision(denied, NOW)) == []
    assert approve(store, "vault-1234") == []


# --- pairing ---------------------------------------------------------------------------------------


def test_the_first_sender_of_a_pairing_code_becomes_an_owner_and_the_code_dies(store: RouterStore) -> None:
    code = admin(store, "pair", op="create", channel="telegram")["code"]
    first = published(store, store.route_batch([msg(code, n=1, sender="telegram:u1")], NOW))
    assert [e.text for e in first if isinstance(e, ev.OutboundMessage)] == [
        "Paired: telegram:u1 is now an owner of this Clawden."
    ]
    published(store, store.route_batch([msg(code, n=2, sender="telegram:u2")], NOW))
    assert store.roles.owners == [OWNER, "telegram:u1"]


def test_an_expired_pairing_code_is_just_text(store: RouterStore) -> None:
    code = admin(store, "pair", op="create", channel="telegram")["code"]
    published(store, store.route_batch([msg(code)], NOW + pairing.TTL + 1))
    assert store.roles.owners == [OWNER]


def test_a_chat_that_moved_after_its_new_id_spoke_first_keeps_its_wiring_and_conversation(store: RouterStore) -> None:
    # Only the move's own messages say it happened; a message in the new chat can be stored before them.
    admin(store, "chats", op="create", channel="telegram", chat_id="-41", is_group=True, policy="public")
    admin(store, "wirings", op="create", channel="telegram", chat_id="-41", agent_group="main", engage_mode="pattern")
    [before] = wakes(published(store, store.route_batch([msg("first", n=1, chat="-41", group=True)], NOW)))
    overtaking = msg("hello?", n=2, chat="-1001", group=True, mentioned=True)
    moved = ev.ChatMoved(channel="telegram", old_chat_id="-41", new_chat_id="-1001")
    after = msg("second", n=3, chat="-1001", group=True)
    out = published(store, store.route_batch([overtaking, moved, after, moved], NOW + 1))

    [announced] = [e for e in out if isinstance(e, ev.ChatMoved)]
    assert announced == moved
    [wake] = wakes(out)
    assert (wake.session_id, wake.route.chat_id, wake.message.text) == (before.session_id, "-1001", "second")
    chats = admin(store, "chats", op="list", channel="telegram")
    assert [(c["chat_id"], c["wired"], c["policy"]) for c in chats] == [("-1001", ["main"], "public")]
    assert (
        admin(store, "chats", op="move", channel="telegram", chat_id="-1001", new_chat_id="-1002")["chat_id"] == "-1002"
    )
    with pytest.raises(Exception, match="no chat '-41'"):
        admin(store, "chats", op="move", channel="telegram", chat_id="-41", new_chat_id="-1003")


def test_a_chat_that_moved_onto_an_id_also_waiting_for_approval_keeps_every_held_message(store: RouterStore) -> None:
    # A Telegram group upgraded to a supergroup: both ids spoke before the owner answered either card.
    [old_card] = requests(published(store, store.route_batch([msg("first", n=1, chat="-100")], NOW)))
    [new_card] = requests(published(store, store.route_batch([msg("second", n=2, chat="-200")], NOW + 1)))
    moved = ev.ChatMoved(channel="telegram", old_chat_id="-100", new_chat_id="-200")
    assert published(store, store.route_batch([moved], NOW + 2)) == [moved]  # announced
    assert admin(store, "dropped", op="list") == []  # nothing lost on the way

    # The owner answers the card they saw first, for the chat's old id: it still counts, for both messages.
    approve = ev.ApprovalDecision(id=old_card.id, decision="approved", value="connect:main", decided_by=OWNER)
    replayed = wakes(published(store, store.on_decision(approve, NOW + 3)))
    assert [(w.route.chat_id, w.message.text) for w in replayed] == [("-200", "first"), ("-200", "second")]
    late = ev.ApprovalDecision(id=new_card.id, decision="denied", decided_by=OWNER)  # the other card, afterwards
    assert store.on_decision(late, NOW + 4).counts["decisions_ignored"] == 1
    [chat] = admin(store, "chats", op="list", channel="telegram")
    assert (chat["chat_id"], chat["wired"], chat["denied"]) == ("-200", ["main"], False)


def test_a_chat_wired_to_a_group_is_answered_by_it_alone_not_also_through_the_wildcard(store: RouterStore) -> None:
    admin(store, "groups", op="create", name="family")
    admin(store, "chats", op="create", channel="local", chat_id="kitchen")
    admin(store, "wirings", op="create", channel="local", chat_id="kitchen", agent_group="family")

    [own] = wakes(published(store, store.route_batch([msg(channel="local", chat="kitchen", sender=OWNER)], NOW)))
    [other] = wakes(
        published(store, store.route_batch([msg(n=2, channel="local", chat="terminal", sender=OWNER)], NOW))
    )

    assert (own.agent_group, own.route.chat_id) == ("family", "kitchen")
    assert (other.agent_group, other.route.chat_id) == ("main", "terminal")  # `local *` serves the rest


def test_the_terminal_is_told_why_its_message_reached_nobody_and_what_to_do(store: RouterStore) -> None:
    admin(store, "groups", op="delete", name="main")  # the owner is still there: a group is what is missing

    events = published(store, store.route_batch([msg(channel="local", chat="terminal", sender=OWNER)], NOW))

    [reply] = [e for e in events if isinstance(e, ev.OutboundMessage)]
    assert reply.kind == "error" and reply.route.chat_id == "terminal"
    assert reply.text == (
        "(not delivered: chat is not wired to any agent group, and there is none to wire it to:"
        " create one (`clawden groups create NAME`) and wire it (`clawden wire add local terminal"
        " NAME`))"
    )
    assert not wakes(events)
