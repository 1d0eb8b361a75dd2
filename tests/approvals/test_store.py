"""approvals.db steps on a real SQLite file: each decision applied once, with its events in the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from clawden import servicedb
from clawden.bus import events as ev
from clawden.bus.streams import STREAMS, approvals_requests
from services.approvals import cards, policy
from services.approvals.schema import MIGRATIONS
from services.approvals.store import ROUTING, UNROUTED, Store

OWNER = "local:alice"
TERMINAL = ev.Route(channel="local", chat_id="terminal")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "approvals.db")
    yield s
    s.close()


def request(rid: str = "vault-1", kind: str = "credential", expires_at: float = 1060.0) -> ev.ApprovalRequest:
    return ev.ApprovalRequest(
        id=rid,
        kind=kind,  # type: ignore[arg-type]
        requester="vault",
        agent_group="main",
        card=ev.Card(title="t", buttons=(cards.APPROVE, cards.DENY)),
        expires_at=expires_at,
        context={"method": "GET", "host": "example.com", "path": "/"},
    )


def drain(store: Store) -> list[ev.Event]:
    rows = store.outgoing()
    store.published([r.id for r in rows])
    return [ev.decode(r.payload) for r in rows]


def sent_card(store: Store) -> ev.OutboundMessage:
    (card,) = [e for e in drain(store) if isinstance(e, ev.OutboundMessage)]
    store.receipt(ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=True, platform_message_id="m1"), 1001)
    return card


def click(card: ev.OutboundMessage, button: str, who: str = OWNER, action: str = "a1") -> ev.InboundAction:
    return ev.InboundAction(
        route=card.route,
        action_id=action,
        sender=ev.Sender(id=who, name=who.split(":")[1]),
        card_id=card.id,
        button_id=button,
        message_id="m1",
    )


def test_request_sends_a_card_to_the_approvers_direct_chat(store: Store) -> None:
    assert store.add_request(request(), [OWNER], 1000).result == "sent"
    card = sent_card(store)
    assert card.route == TERMINAL and card.id.startswith("ap-") and card.card is not None
    assert card.kind == "notice"  # Clawden asking, not the agent speaking
    assert store.list("pending")[0]["approver"] == OWNER


def test_no_approver_is_a_clear_denial_to_the_requester(store: Store) -> None:
    assert store.add_request(request(), [], 1000).result == "no_approver"
    (decision,) = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "denied"
    assert "nobody can approve it" in decision.reason


def test_a_request_without_an_expiry_lives_its_kinds_lifetime_from_when_it_reached_the_bus(store: Store) -> None:
    """Handled late (the router away for a while, a restart): its age still counts from when it was asked."""
    store.add_request(request(expires_at=0), [OWNER], now=1100, asked_at=1000)
    assert store.list("pending")[0]["expires_at"] == 1000 + policy.ttl("credential")


def test_the_routers_refusal_to_name_approvers_denies_its_groups_waiting_requests_and_its_silence_expires_them(
    store: Store,
) -> None:
    store.wait_for_router(request("refused"), 1000, 1000)
    store.wait_for_router(request("refused-too"), 1000, 1000)
    store.wait_for_router(ops("silent"), 1000, 1000)
    refused = store.refused("main", "the router refused: bad request", 1001)
    assert (refused.result, refused.counts) == ("refused", {"no_approver": 2})
    assert store.expire_due(1060) == 1
    decisions = [e for e in drain(store) if isinstance(e, ev.ApprovalDecision)]
    assert [(d.id, d.decision, d.decided_by, d.reason) for d in decisions] == [
        ("refused", "denied", "approvals", "the router refused: bad request"),
        ("refused-too", "denied", "approvals", "the router refused: bad request"),
        ("silent", "expired", "", UNROUTED),
    ]
    assert store.refused("main", "again", 1061).counts == {} and store.list("pending") == []


def ops(rid: str) -> ev.ApprovalRequest:
    return msgspec.structs.replace(request(rid), agent_group="ops")


def test_one_answer_of_the_router_records_every_request_of_its_group_waiting_for_it(store: Store) -> None:
    """Each gets its card, as if it had named its approvers; another group's keep waiting, and an expired one is left
    to expire (`expire_due`), not sent a card."""
    store.wait_for_router(request("vault-1"), 1000, 1000)
    store.wait_for_router(request("vault-2", expires_at=1020), 1001, 1001)
    store.wait_for_router(request("vault-3"), 1002, 1002)
    store.wait_for_router(ops("vault-ops"), 1002, 1002)
    assert store.waiting_groups(1010) == ["main", "ops"]
    assert store.waiting_groups(1060) == []  # all expired: nobody is asked about them
    drain(store)

    routed = store.routed("main", [OWNER], 1030)
    assert (routed.result, routed.counts) == ("routed", {"sent": 2})
    cards_sent = [e for e in drain(store) if isinstance(e, ev.OutboundMessage)]
    assert [c.route for c in cards_sent] == [TERMINAL, TERMINAL] and len({c.id for c in cards_sent}) == 2
    pending = {r["id"]: r for r in store.list("pending")}
    assert {i: (r["approver"], r["reason"]) for i, r in pending.items()} == {
        "vault-1": (OWNER, ""),
        "vault-3": (OWNER, ""),
        "vault-2": ("", ROUTING),  # expired at 1020: the timer's
        "vault-ops": ("", ROUTING),
    }
    assert (pending["vault-1"]["created_at"], pending["vault-1"]["expires_at"]) == (1030, 1060)
    assert store.waiting_groups(1030) == ["ops"]
    assert store.routed("main", [OWNER], 1031).counts == {}  # asked again: nothing left to send
    assert store.expire_due(1031) == 1
    (expired,) = drain(store)
    assert isinstance(expired, ev.ApprovalDecision) and (expired.id, expired.reason) == ("vault-2", UNROUTED)


def test_a_decision_applies_once_even_if_clicked_twice(store: Store) -> None:
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    assert store.click(click(card, "approve"), 1002).result == "approved"
    assert store.click(click(card, "approve"), 1003).result == "duplicate"  # the same click redelivered
    assert store.click(click(card, "deny", action="a2"), 1004).result == "already"
    events = drain(store)
    decisions = [e for e in events if isinstance(e, ev.ApprovalDecision)]
    assert [(d.decision, d.decided_by) for d in decisions] == [("approved", OWNER)]
    edit = next(e for e in events if isinstance(e, ev.OutboundEdit))
    assert edit.target_message_id == "m1" and edit.card is not None and edit.card.buttons == ()
    assert "Approved by local:alice" in edit.text
    assert store.get("vault-1")["status"] == "approved"  # type: ignore[index]


def test_a_strangers_click_is_refused_and_changes_nothing(store: Store) -> None:
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    assert store.click(click(card, "approve", who="local:mallory"), 1002).result == "refused"
    (reply,) = drain(store)
    assert isinstance(reply, ev.OutboundMessage) and reply.text.startswith("Sorry mallory")
    assert store.list("pending")[0]["id"] == "vault-1"


def test_expiry_tells_the_requester_and_edits_the_card(store: Store) -> None:
    store.add_request(request(expires_at=1010), [OWNER], 1000)
    sent_card(store)
    assert store.expire_due(1009) == 0
    assert store.expire_due(1010) == 1
    decision, edit = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "expired"
    assert isinstance(edit, ev.OutboundEdit) and "Expired" in edit.text


def test_a_click_after_the_expiry_expires_the_request_instead_of_approving_it(store: Store) -> None:
    """The expiry timer had not fired yet (or the service was down): the click is judged by its own
    time, so a stale card approves nothing."""
    store.add_request(request(expires_at=1010), [OWNER], 1000)
    card = sent_card(store)
    assert store.click(click(card, "approve"), 5000).result == "expired"
    decision, edit, reply = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "expired"
    assert isinstance(edit, ev.OutboundEdit) and "Expired" in edit.text
    assert isinstance(reply, ev.OutboundMessage) and "had expired" in reply.text and reply.route == TERMINAL
    assert store.get("vault-1")["status"] == "expired"  # type: ignore[index]


def test_a_click_in_time_still_decides_when_it_is_applied_late(store: Store) -> None:
    store.add_request(request(expires_at=1010), [OWNER], 1000)
    card = sent_card(store)
    assert store.click(click(card, "approve"), 1009.9).result == "approved"


def test_a_decision_at_the_machine_after_the_expiry_approves_nothing(store: Store) -> None:
    store.add_request(request(expires_at=1010), [OWNER], 1000)
    sent_card(store)
    assert store.decide("vault-1", "approve", OWNER, 1010).result == "expired"
    decision, _edit = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "expired"


def test_a_card_decided_before_its_receipt_is_edited_when_the_receipt_comes(store: Store) -> None:
    store.add_request(request(expires_at=1010), [OWNER], 1000)
    (card,) = drain(store)
    assert isinstance(card, ev.OutboundMessage)
    store.expire_due(1011)
    assert [type(e) for e in drain(store)] == [ev.ApprovalDecision]
    store.receipt(ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=True, platform_message_id="m9"), 1012)
    (edit,) = drain(store)
    assert isinstance(edit, ev.OutboundEdit) and edit.target_message_id == "m9"


def amendment(of: str = "vault-1", by: str = "vault", why: str = "the key was revoked") -> ev.ApprovalRequest:
    """The requester's word that a decided request was not carried out (the router's, in the service)."""
    return msgspec.structs.replace(
        request(f"{of}-amend"), requester=by, card=ev.Card(title="Not carried out", body=f"⚠️ {why}"), amends=of
    )


def test_a_requester_that_could_not_carry_out_a_decision_says_so_under_the_cards_outcome(store: Store) -> None:
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    store.click(click(card, "approve"), 1002)
    drain(store)
    assert store.amend(amendment(by="runner"), 1003).result == "amend_ignored"  # only the requester that asked
    assert store.amend(amendment(), 1003).result == "amended"
    (edit,) = drain(store)  # nothing asked, nobody else told: the pressed card shows it
    assert isinstance(edit, ev.OutboundEdit) and edit.target_message_id == "m1" and edit.id.endswith(":amended")
    assert edit.text.endswith("Approved by local:alice\n⚠️ the key was revoked")
    assert store.amend(amendment(why="again"), 1004).result == "amend_ignored"  # said once
    assert drain(store) == [] and store.get("vault-1-amend") is None


def test_an_amendment_waits_for_the_decision_and_rides_on_the_edit_when_the_receipt_comes(store: Store) -> None:
    store.add_request(request(), [OWNER], 1000)
    assert store.amend(amendment(), 1001).result == "amend_ignored"  # still pending: nothing to amend yet
    (card,) = drain(store)
    assert isinstance(card, ev.OutboundMessage)
    store.decide("vault-1", "approve", OWNER, 1002)
    assert store.amend(amendment(), 1003).result == "amended"
    assert [type(e) for e in drain(store)] == [ev.ApprovalDecision]  # the card's id is not known yet
    store.receipt(ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=True, platform_message_id="m9"), 1004)
    (edit,) = drain(store)
    assert isinstance(edit, ev.OutboundEdit) and edit.text.endswith("\n⚠️ the key was revoked")


def withdrawal(
    rid: str = "vault-1", by: str = "vault", why: str = "the agent hung up", last_call: bool = False
) -> ev.ApprovalWithdrawn:
    return ev.ApprovalWithdrawn(id=rid, requester=by, reason=why, last_call=last_call)


def test_a_withdrawn_request_is_settled_once_and_its_card_says_so(store: Store) -> None:
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    assert store.withdraw(withdrawal(by="runner"), 1001).result == "withdraw_ignored"  # only the requester that asked
    assert drain(store) == [] and store.list("pending")[0]["id"] == "vault-1"
    assert store.withdraw(withdrawal(), 1002).result == "withdrawn"
    decision, edit = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "expired"
    assert decision.reason == "withdrawn by vault: the agent hung up"
    assert isinstance(edit, ev.OutboundEdit) and edit.card is not None and edit.card.buttons == ()
    assert edit.text.endswith("↩️ Withdrawn: the agent hung up")
    assert store.withdraw(withdrawal(why="again"), 1003).result == "withdraw_ignored"  # once
    assert store.click(click(card, "approve"), 1004).result == "already"
    (reply,) = drain(store)
    assert isinstance(reply, ev.OutboundMessage)
    assert reply.text == "This was already settled: withdrawn (the agent hung up); nothing was let through."


RESTARTED = "the vault restarted while it waited; the agent's request was dropped"


def test_an_approval_its_requester_never_heard_says_so_under_who_approved_once(store: Store) -> None:
    """The owner pressed while the vault was down: the press was applied, but at its start the vault withdrew the
    ask, and let nothing through. The card keeps who approved and adds why nothing was let through, once."""
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    store.click(click(card, "approve"), 1002)
    drain(store)
    assert store.withdraw(withdrawal(why=RESTARTED), 1003).result == "withdrawn_after"
    (edit,) = drain(store)  # the decision stands, published once: only the card is amended
    assert isinstance(edit, ev.OutboundEdit) and edit.target_message_id == "m1" and edit.id.endswith(":withdrawn")
    assert edit.text.endswith(
        f"✅ Approved by local:alice\n↩️ But its requester had stopped waiting ({RESTARTED}): nothing was let through"
    )
    assert store.get("vault-1")["status"] == "approved"  # type: ignore[index]
    assert store.withdraw(withdrawal(why="again"), 1004).result == "withdraw_ignored"  # amended once
    assert drain(store) == []
    assert store.click(click(card, "approve", action="a2"), 1005).result == "already"
    (reply,) = drain(store)
    assert isinstance(reply, ev.OutboundMessage)
    assert reply.text == (
        f"This was already settled: approved by {OWNER}, but its requester had stopped waiting ({RESTARTED});"
        " nothing was let through."
    )


def test_an_approval_decided_before_its_receipt_and_then_withdrawn_is_drawn_with_both_when_the_receipt_comes(
    store: Store,
) -> None:
    store.add_request(request(), [OWNER], 1000)
    (card,) = drain(store)
    assert isinstance(card, ev.OutboundMessage)
    store.decide("vault-1", "approve", OWNER, 1001)
    assert store.withdraw(withdrawal(why=RESTARTED), 1002).result == "withdrawn_after"
    assert [type(e) for e in drain(store)] == [ev.ApprovalDecision]  # the card's id is not known yet
    store.receipt(ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=True, platform_message_id="m9"), 1003)
    (edit,) = drain(store)
    assert isinstance(edit, ev.OutboundEdit) and "Approved by local:alice\n↩️ But its requester" in edit.text


def test_a_last_call_after_an_approval_changes_nothing(store: Store) -> None:
    """The vault's own wait ended: it withdraws, yet still takes the decision published before for a moment, and
    lets an approval through. Its card must not say that nothing was."""
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    store.click(click(card, "approve"), 1002)
    drain(store)
    assert store.withdraw(withdrawal(why="its wait ended", last_call=True), 1003).result == "withdraw_ignored"
    assert drain(store) == [] and store.get("vault-1")["withdrawn"] is None  # type: ignore[index]
    # It let nothing through after all (the decision reached it too late): its final withdrawal amends the card.
    assert store.withdraw(withdrawal(why="its wait ended"), 1006).result == "withdrawn_after"


def test_a_withdrawal_of_a_denied_request_changes_nothing(store: Store) -> None:
    """Nothing was let through, and its card says so already."""
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    store.click(click(card, "deny"), 1002)
    drain(store)
    assert store.withdraw(withdrawal(why=RESTARTED), 1003).result == "withdraw_ignored"
    assert drain(store) == [] and store.get("vault-1")["status"] == "denied"  # type: ignore[index]


def test_a_withdrawal_before_its_request_is_recorded_settles_it_when_it_comes_without_a_card(store: Store) -> None:
    """The request was held while the router was asked who approves (a `Retry`), and the withdrawal overtook it."""
    assert store.withdraw(withdrawal(by="router"), 1000).result == "withdrawn_early"
    assert store.withdraw(withdrawal(), 1000).result == "withdrawn_early"
    assert store.wait_for_router(request(), 999, 1001).result == "withdrawn"  # no router is asked about it
    assert store.wait_for_router(request("vault-2"), 999, 1001).result == "waiting"
    assert store.waiting_groups(1001) == ["main"] and store.add_request(request(), [], 1001).result == "duplicate"
    (decision,) = drain(store)  # no card
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "expired"
    assert decision.reason == "withdrawn by vault: the agent hung up"
    assert store.add_request(request("vault-2"), [OWNER], 1001).result == "sent"  # only the id withdrawn


def withdrawals_kept(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.conn.execute("SELECT id, requester FROM withdrawals ORDER BY id, requester")]


def test_a_withdrawal_is_not_kept_once_its_request_is_recorded(store: Store) -> None:
    """What a withdrawal is kept for is its request coming after it; once recorded, a copy of either changes nothing,
    and the card still says it was withdrawn."""
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    store.withdraw(withdrawal(), 1001)
    store.withdraw(withdrawal("vault-2"), 1001)
    store.withdraw(withdrawal("vault-2", by="router"), 1001)
    assert store.add_request(request("vault-2"), [OWNER], 1002).result == "withdrawn"
    assert withdrawals_kept(store) == []
    drain(store)
    assert store.add_request(request("vault-2"), [OWNER], 1003).result == "duplicate"
    assert store.withdraw(withdrawal("vault-2"), 1003).result == "withdraw_ignored"
    assert store.click(click(card, "approve"), 1004).result == "already"
    (reply,) = drain(store)
    assert isinstance(reply, ev.OutboundMessage)
    assert reply.text == "This was already settled: withdrawn (the agent hung up); nothing was let through."


def test_a_withdrawal_whose_request_never_came_is_kept_while_a_copy_of_it_still_could(store: Store) -> None:
    """A request is stored at most the duplicate window after it was asked (a publisher's retries), and delivered at
    most the stream's max_age after that: a withdrawal waits that long for it, then is forgotten."""
    [stream] = [s for s in STREAMS if s.name == approvals_requests().stream]
    kept = stream.max_age + stream.duplicate_window
    store.withdraw(withdrawal("vault-gone"), 1000)
    store.withdraw(withdrawal("vault-late"), 1000 + 3600)
    assert store.forget_withdrawals(1000 + kept - 1) == 0
    assert store.forget_withdrawals(1000 + kept) == 1
    assert withdrawals_kept(store) == [("vault-late", "vault")]
    assert store.add_request(request("vault-late"), [OWNER], 1000 + kept).result == "withdrawn"


def test_migrating_keeps_a_withdrawn_requests_card_saying_so(tmp_path: Path) -> None:
    """Withdrawals kept before a request's row said so itself move into the row; those of a recorded request go."""
    path = tmp_path / "approvals.db"
    conn, _ = servicedb.open_db(path, MIGRATIONS[:5])
    withdrawn = request()
    conn.execute(
        "INSERT INTO approvals (id, card_id, kind, requester, agent_group, request, card, status, approver, deciders,"
        " channel, chat_id, card_message_id, created_at, expires_at, decided_at, reason, edited)"
        " VALUES ('vault-1', 'ap-1', 'credential', 'vault', 'main', ?, ?, 'expired', ?, ?, 'local', 'terminal', 'm1',"
        " 1000, 1060, 1001, 'withdrawn by vault: gone', 1)",
        (ev.encode(withdrawn), msgspec.json.encode(withdrawn.card), OWNER, f'["{OWNER}"]'),
    )
    conn.execute("INSERT INTO withdrawals VALUES ('vault-1', 'vault', 'gone', 1001), ('vault-2', 'vault', 'x', 1001)")
    conn.close()
    store = Store.open(path)
    assert withdrawals_kept(store) == [("vault-2", "vault")]
    late = ev.InboundAction(
        route=TERMINAL, action_id="a1", sender=ev.Sender(id=OWNER), card_id="ap-1", button_id="approve"
    )
    assert store.click(late, 1002).result == "already"
    (reply,) = drain(store)
    assert isinstance(reply, ev.OutboundMessage)
    assert reply.text == "This was already settled: withdrawn (gone); nothing was let through."
    store.close()


def test_an_undeliverable_card_denies_the_request(store: Store) -> None:
    store.add_request(request(), [OWNER], 1000)
    (card,) = drain(store)
    assert isinstance(card, ev.OutboundMessage)
    store.receipt(ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=False, error="chat not found"), 1001)
    (decision,) = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "denied"
    assert "chat not found" in decision.reason


def test_an_undeliverable_card_goes_to_the_next_approver_in_line(store: Store) -> None:
    """The group admin blocked the bot: the card goes to the next approver (here a global admin on
    Telegram, then the owner at the terminal), who decides; the request never waits for nobody."""
    approvers = ["telegram:111", "telegram:222", OWNER]
    store.add_request(request(), approvers, 1000)
    (first,) = drain(store)
    assert isinstance(first, ev.OutboundMessage) and first.route.chat_id == "111"
    refused = ev.DeliveryReceipt(outbound_id=first.id, route=first.route, ok=False, error="bot was blocked")
    assert store.receipt(refused, 1001).result == "next_approver"
    assert store.receipt(refused, 1001).result == "not_ours", "a redelivered receipt changes nothing"
    (second,) = drain(store)
    assert isinstance(second, ev.OutboundMessage) and second.route.chat_id == "222" and second.id != first.id
    store.receipt(ev.DeliveryReceipt(outbound_id=second.id, route=second.route, ok=False, error="chat not found"), 1002)
    third = sent_card(store)
    assert third.route == TERMINAL and store.list("pending")[0]["approver"] == OWNER
    assert store.click(click(third, "approve"), 1003).result == "approved"
    decision, edit = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "approved"
    assert isinstance(edit, ev.OutboundEdit) and edit.route == TERMINAL
    found = store.get("vault-1")
    assert found is not None
    trail = [(a["what"], a["actor"]) for a in found["audit"]]
    assert trail.count(("card_undeliverable", "telegram:111")) == 1 and ("card_sent", OWNER) in trail


def test_an_unconfirmed_card_counts_as_shown_and_its_buttons_keep_working(store: Store) -> None:
    """The platform lost its answer and the bridge did not send the card twice: it is most likely in the
    chat, so the request waits for a click there, not for the next approver."""
    store.add_request(request(), ["telegram:111", OWNER], 1000)
    (card,) = drain(store)
    assert isinstance(card, ev.OutboundMessage) and card.route.chat_id == "111"
    unconfirmed = ev.DeliveryReceipt(
        outbound_id=card.id,
        route=card.route,
        ok=False,
        final=True,
        unconfirmed=True,
        error="unconfirmed: telegram did not confirm the message",
    )
    assert store.receipt(unconfirmed, 1001).result == "unconfirmed"
    assert drain(store) == []  # no second card, no denial
    assert store.list("pending")[0]["approver"] == "telegram:111"
    pressed = msgspec.structs.replace(click(card, "approve", who="telegram:111"), message_id="tg-5")
    assert store.click(pressed, 1002).result == "approved"
    decision, edit = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decided_by == "telegram:111"
    assert isinstance(edit, ev.OutboundEdit) and edit.target_message_id == "tg-5"


def test_when_no_approver_can_be_reached_the_request_is_denied_with_the_reason(store: Store) -> None:
    store.add_request(request(), ["telegram:111", "telegram:222"], 1000)
    for error in ("bot was blocked", "chat not found"):
        (card,) = drain(store)
        assert isinstance(card, ev.OutboundMessage)
        store.receipt(ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=False, error=error), 1001)
    (decision,) = drain(store)
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "denied"
    assert decision.reason == "the card could not be delivered to telegram:222: chat not found"


def test_at_the_machine_approve_takes_the_cards_first_yes_and_a_question_its_choice(store: Store) -> None:
    wiring = ev.ApprovalRequest(
        id="router-1",
        kind="channel",
        requester="router",
        agent_group="main",
        card=ev.Card(
            title="New chat",
            buttons=(
                ev.Button(id="connect:main", label="Connect to main", style="primary"),
                ev.Button(id="deny", label="Ignore this chat", style="danger"),
            ),
        ),
    )
    store.add_request(wiring, [OWNER], 1000)
    assert store.decide("router-1", "approve", OWNER, 1001).result == "approved"
    assert store.get("router-1")["value"] == "connect:main"  # type: ignore[index]
    assert store.decide("router-1", "deny", OWNER, 1002).result == "already"

    question = ev.ApprovalRequest(
        id="q-1",
        kind="question",
        requester="runner",
        agent_group="main",
        route=TERMINAL,
        card=ev.Card(
            title="Tea or coffee?", buttons=(ev.Button(id="1", label="Tea"), ev.Button(id="2", label="Coffee"))
        ),
    )
    store.add_request(question, [], 1000)
    assert [
        e.kind
        for e in drain(store)
        if isinstance(e, ev.OutboundMessage) and e.card is not None and e.card.title == "Tea or coffee?"
    ] == ["reply"]  # the agent asks
    assert store.decide("q-1", "approve", OWNER, 1001).result == "bad_button", "a question has no yes"
    assert store.decide("q-1", "coffee", OWNER, 1002).result == "answered"
    assert store.decide("nope", "approve", OWNER, 1003).result == "unknown"


def test_a_learned_direct_chat_is_remembered_across_restarts(tmp_path: Path) -> None:
    laptop = ev.Route(channel="local", chat_id="laptop")
    first = Store.open(tmp_path / "approvals.db")
    assert first.learn_chat(OWNER, laptop, 1000) and not first.learn_chat(OWNER, laptop, 1001)
    first.close()
    second = Store.open(tmp_path / "approvals.db")
    second.add_request(request(), [OWNER], 1000)
    assert [e.route for e in drain(second) if isinstance(e, ev.OutboundMessage)] == [laptop]
    second.close()


def test_every_step_is_audited(store: Store) -> None:
    store.add_request(request(), [OWNER], 1000)
    card = sent_card(store)
    store.click(click(card, "approve", who="local:mallory"), 1002)
    store.click(click(card, "deny", action="a2"), 1003)
    found = store.get(card.id)
    assert found is not None
    assert [a["what"] for a in found["audit"]] == ["requested", "card_sent", "refused", "denied"]
    assert msgspec.json.encode(found)  # the control endpoint can send it as is


def test_a_question_asked_in_a_group_that_became_a_supergroup_is_answered_from_the_supergroup(store: Store) -> None:
    old = ev.Route(channel="telegram", chat_id="-41")
    question = ev.ApprovalRequest(
        id="q-1",
        kind="question",
        requester="runner",
        agent_group="main",
        route=old,
        card=ev.Card(
            title="Pizza or pasta?", buttons=(ev.Button(id="1", label="Pizza"), ev.Button(id="2", label="Pasta"))
        ),
    )
    store.add_request(question, [], 1000)
    card = sent_card(store)
    assert store.move_chat(ev.ChatMoved(channel="telegram", old_chat_id="-41", new_chat_id="-1001")) == 1
    from_supergroup = msgspec.structs.replace(
        click(card, "2", who="telegram:7"), route=ev.Route(channel="telegram", chat_id="-1001")
    )
    assert store.click(from_supergroup, 1001).result == "answered"


def test_events_queued_before_the_kernel_outbox_are_still_published_in_order(tmp_path: Path) -> None:
    conn, _ = servicedb.open_db(tmp_path / "approvals.db", MIGRATIONS[:2])
    events = [ev.ApprovalDecision(id=f"ap-{i}", decision="denied") for i in range(3)]
    conn.executemany(
        "INSERT INTO outbox (subject, msg_id, payload) VALUES (?, ?, ?)",
        [(f"s{i}", f"m{i}", ev.encode(e)) for i, e in enumerate(events)],
    )
    conn.close()
    store = Store.open(tmp_path / "approvals.db")
    rows = store.outgoing()
    assert [(r.lane, r.subject, r.msg_id) for r in rows] == [("", "s0", "m0"), ("", "s1", "m1"), ("", "s2", "m2")]
    assert drain(store) == events and store.outgoing() == []
    store.close()


def test_a_card_with_nothing_to_press_is_a_notice_that_never_waits_expires_or_is_edited(store: Store) -> None:
    notice = msgspec.structs.replace(
        request(), card=ev.Card(title="Agent main hit the rate limit r", body="…"), context={"rule": "r"}
    )
    assert store.add_request(notice, [OWNER], 1000).result == "notice"
    card, settled = drain(store)
    assert isinstance(card, ev.OutboundMessage) and card.card is not None and card.card.buttons == ()
    assert isinstance(settled, ev.ApprovalDecision) and settled.decision == "answered"
    assert store.list("pending") == [] and store.expire_due(2000) == 0
    store.receipt(ev.DeliveryReceipt(outbound_id=card.id, route=card.route, ok=True, platform_message_id="m5"), 1001)
    assert drain(store) == []  # no "Expired" or "Answered" line is added to a notice


# --- waiting for the router ---------------------------------------------------------------------------


def test_a_request_waiting_for_the_router_is_kept_in_the_database_from_its_first_try(tmp_path: Path) -> None:
    """Listed and shown as pending from approvals.db, so a restart shows it at once (not when it is delivered again),
    with the choices its owner has at the machine."""
    first = Store.open(tmp_path / "approvals.db")
    assert first.wait_for_router(request(), 1000, 1000).result == "waiting"
    # A copy (published again, or delivered again after a crash before its ack) writes nothing.
    assert first.wait_for_router(request(), 1000, 1001).result == "duplicate"
    first.close()

    again = Store.open(tmp_path / "approvals.db")
    (listed,) = again.list("pending")
    assert (listed["id"], listed["status"], listed["approver"], listed["reason"]) == ("vault-1", "pending", "", ROUTING)
    assert (listed["created_at"], listed["expires_at"]) == (1000, 1060)
    assert [r["id"] for r in again.list()] == ["vault-1"] and again.list("approved") == []
    shown = again.get("vault-1")
    assert shown is not None and [b["label"] for b in shown["buttons"]] == ["Approve", "Deny"]
    assert [a["what"] for a in shown["audit"]] == ["waiting"]
    assert msgspec.json.encode(shown)  # the control endpoint can send it as is
    assert drain(again) == []  # nothing sent while it waits
    again.close()


def test_migrating_keeps_each_request_waiting_for_the_router_under_its_group(tmp_path: Path) -> None:
    """Requests that waited before one ask served a whole group are asked about, and recorded, by their group."""
    path = tmp_path / "approvals.db"
    conn, _ = servicedb.open_db(path, [m for m in MIGRATIONS if m[0] < "0008"])
    for waiting in (request("vault-1"), ops("vault-ops")):
        conn.execute(
            "INSERT INTO waiting (id, request, asked_at, expires_at) VALUES (?, ?, 1000, 1060)",
            (waiting.id, ev.encode(waiting)),
        )
    conn.close()
    store = Store.open(path)
    assert store.waiting_groups(1000) == ["main", "ops"]
    assert store.routed("ops", [OWNER], 1001).counts == {"sent": 1}
    assert [r["id"] for r in store.list("pending") if r["approver"] == OWNER] == ["vault-ops"]
    store.close()


def test_a_request_the_router_named_approvers_for_waits_no_more(store: Store) -> None:
    store.wait_for_router(request(), 1000, 1000)
    assert store.add_request(request(), [OWNER], 1001, asked_at=1000).result == "sent"
    (listed,) = store.list("pending")
    assert (listed["approver"], listed["reason"]) == (OWNER, "")
    assert store.next_expiry() == 1060
    assert store.wait_for_router(request(), 1000, 1002).result == "duplicate"  # a copy: nobody is asked


def test_the_owner_decides_a_request_waiting_for_the_router_at_once_without_a_card(store: Store) -> None:
    store.wait_for_router(request(), 1000, 1000)
    assert store.decide("vault-1", "maybe", "local:owner", 1001).result == "bad_button"
    assert store.list("pending")[0]["reason"] == ROUTING  # still waiting: nothing was recorded
    assert store.decide("vault-1", "approve", "local:owner", 1002).result == "approved"
    (decision,) = drain(store)  # to the requester, and no card to anybody
    assert isinstance(decision, ev.ApprovalDecision)
    assert (decision.id, decision.decision, decision.decided_by, decision.value) == (
        "vault-1",
        "approved",
        "local:owner",
        "approve",
    )
    found = store.get("vault-1")
    assert found is not None and (found["status"], found["approver"], found["deciders"]) == ("approved", "", [])
    assert [a["what"] for a in found["audit"]] == ["waiting", "requested", "unrouted", "approved"]
    assert store.list("pending") == [] and store.next_expiry() is None
    # It waits no more: a copy asks nobody, and the router's answer, or its refusal, sends and decides nothing.
    assert store.wait_for_router(request(), 1000, 1003).result == "duplicate" and store.waiting_groups(1003) == []
    assert store.add_request(request(), [OWNER], 1003, asked_at=1000).result == "duplicate"
    assert store.routed("main", [OWNER], 1003).counts == store.refused("main", "no", 1003).counts == {}
    assert store.decide("vault-1", "deny", "local:owner", 1004).result == "already"
    assert drain(store) == []


def test_a_request_waiting_for_the_router_expires_at_its_own_time(store: Store) -> None:
    """Its silence is nobody's decision: expired, not denied, once, without a card; the machine's owner is too late."""
    store.wait_for_router(request(expires_at=1060), 1000, 1000)
    store.wait_for_router(request("vault-2", expires_at=1090), 1000, 1000)
    assert store.next_expiry() == 1060
    assert store.expire_due(1059) == 0
    assert store.expire_due(1060) == 1
    (decision,) = drain(store)
    assert isinstance(decision, ev.ApprovalDecision)
    assert (decision.id, decision.decision, decision.decided_by) == ("vault-1", "expired", "")
    assert decision.reason == UNROUTED
    assert store.expire_due(1061) == 0 and store.next_expiry() == 1090
    assert store.decide("vault-2", "approve", "local:owner", 1090).result == "expired"
    (late,) = drain(store)
    assert isinstance(late, ev.ApprovalDecision) and (late.decision, late.reason) == ("expired", UNROUTED)
    assert [r["status"] for r in store.list()] == ["expired", "expired"] and store.next_expiry() is None


def test_a_request_waiting_for_the_router_is_withdrawn_at_once(store: Store) -> None:
    """Its requester stops waiting (the vault's wait ended): settled now, not at its held delivery's next try."""
    store.wait_for_router(request(), 1000, 1000)
    assert store.withdraw(withdrawal(by="runner"), 1001).result == "withdrawn_early"  # not its requester
    assert store.list("pending")[0]["reason"] == ROUTING
    assert store.withdraw(withdrawal(), 1002).result == "withdrawn"
    (decision,) = drain(store)  # no card
    assert isinstance(decision, ev.ApprovalDecision) and decision.decision == "expired"
    assert decision.reason == "withdrawn by vault: the agent hung up"
    assert store.list("pending") == [] and store.wait_for_router(request(), 1000, 1000).result == "duplicate"
