"""The pure rules: card delivery, who may decide, what a button means, and the card's words."""

from __future__ import annotations

import pytest

from clawden.bus import events as ev
from services.approvals import cards, policy

TERMINAL = ev.Route(channel="local", chat_id="terminal")


def request(kind: str = "credential", route: ev.Route | None = None, **context: str) -> ev.ApprovalRequest:
    return ev.ApprovalRequest(
        id="r1",
        kind=kind,  # type: ignore[arg-type]
        requester="vault",
        agent_group="main",
        card=ev.Card(title="t", buttons=(cards.APPROVE, cards.DENY)),
        route=route,
        context=context,
    )


def test_card_goes_to_the_first_reachable_approver() -> None:
    chosen = policy.choose_delivery(request(), ["xmpp:alice@example.org", "local:alice"], {})
    assert chosen == policy.Delivery("local:alice", TERMINAL)  # a platform not reached by handle needs a chat we saw


def test_card_prefers_an_approver_on_the_channel_the_request_came_from() -> None:
    origin = ev.Route(channel="telegram", chat_id="-100", thread_id=None)
    chosen = policy.choose_delivery(request("sender", origin), ["local:alice", "telegram:42"], {})
    assert chosen == policy.Delivery("telegram:42", ev.Route(channel="telegram", chat_id="42"))


def test_a_learned_direct_chat_wins_over_the_derived_one() -> None:
    learned = ev.Route(channel="local", chat_id="laptop")
    assert policy.choose_delivery(request(), ["local:alice"], {"local:alice": learned}) == policy.Delivery(
        "local:alice", learned
    )


def test_no_reachable_approver_means_no_delivery() -> None:
    assert policy.choose_delivery(request(), [], {}) is None
    assert policy.choose_delivery(request(), ["xmpp:alice@example.org"], {}) is None


def test_a_question_goes_to_the_chat_that_asked() -> None:
    asking = ev.Route(channel="telegram", chat_id="-5")
    assert policy.choose_delivery(request("question", asking), ["local:alice"], {}) == policy.Delivery("", asking)


def test_only_deciders_may_decide() -> None:
    assert policy.may_decide("credential", ["local:alice"], TERMINAL, "local:alice", TERMINAL)
    assert not policy.may_decide("credential", ["local:alice"], TERMINAL, "local:mallory", TERMINAL)
    assert not policy.may_decide("credential", [], TERMINAL, "local:alice", TERMINAL)


def test_a_question_is_answered_only_from_the_chat_that_asked() -> None:
    elsewhere = ev.Route(channel="local", chat_id="other")
    assert policy.may_decide("question", [], TERMINAL, "local:bob", TERMINAL)
    assert not policy.may_decide("question", [], TERMINAL, "local:bob", elsewhere)


def test_button_meaning() -> None:
    assert policy.meaning("credential", cards.APPROVE) == "approved"
    assert policy.meaning("credential", cards.DENY) == "denied"
    assert policy.meaning("channel", ev.Button(id="connect:main", label="Connect")) == "approved"
    assert policy.meaning("channel", ev.Button(id="ignore", label="Ignore", style="danger")) == "denied"
    assert policy.meaning("question", ev.Button(id="2", label="Coffee")) == "answered"


def test_short_card_ids_fit_telegram_callback_data() -> None:
    ids = {cards.short_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("ap-") and len(f"{i}:9".encode()) <= 64 for i in ids)


def test_credential_card_says_agent_method_host_path_and_preview_in_plain_words() -> None:
    card = cards.card_for(
        request(
            method="POST",
            host="api.github.com",
            path="/repos/x/issues",
            rule="github writes",
            body_preview='{"title": "hi", "token": "[redacted]"}',
        )
    )
    assert card.title == "Allow main to call api.github.com?"
    assert "Agent group main" in card.body and "POST https://api.github.com/repos/x/issues" in card.body
    assert '"title": "hi"' in card.body and [b.id for b in card.buttons] == ["approve", "deny"]


def test_decided_card_keeps_the_words_and_drops_the_buttons() -> None:
    card = cards.decided_card(
        ev.Card(title="T", body="B", buttons=(cards.APPROVE,)), cards.outcome_line("approved", "local:alice")
    )
    assert card.buttons == () and card.body == "B\n\n✅ Approved by local:alice"
    assert cards.outcome_line("expired", "", reason="nobody answered in time") == "⌛ Expired (nobody answered in time)"


def test_a_discord_approver_is_reached_in_the_dm_the_bridge_opens_for_their_user_id() -> None:
    chosen = policy.choose_delivery(request(), ["discord:80351110224678912"], {})
    assert chosen == policy.Delivery(
        "discord:80351110224678912", ev.Route(channel="discord", chat_id="@80351110224678912")
    )


# --- settling: a press in a chat, a choice at the machine -----------------------------------------------

ALICE = "local:alice"
QUESTION_BUTTONS = (ev.Button(id="1", label="Tea"), ev.Button(id="2", label="Coffee"))


NOW, EXPIRES = 1000.0, 1060.0


def card(kind: str = "credential", status: str = "pending", deciders: tuple[str, ...] = (ALICE,)) -> policy.Card:
    buttons = QUESTION_BUTTONS if kind == "question" else (cards.APPROVE, cards.DENY)
    return policy.Card(kind=kind, status=status, deciders=deciders, route=TERMINAL, buttons=buttons, expires_at=EXPIRES)


ELSEWHERE = ev.Route(channel="local", chat_id="other")


@pytest.mark.parametrize(
    ("settling", "clicker", "where", "button", "outcome", "at"),
    [
        (card(), ALICE, TERMINAL, "approve", policy.Settle("approved", cards.APPROVE), NOW),
        (card(), ALICE, ELSEWHERE, "deny", policy.Settle("denied", cards.DENY), NOW),  # an approver decides anywhere
        (card(), "local:mallory", TERMINAL, "approve", policy.Unsettled("refused"), NOW),
        # a stranger hears "not yours", never whether it was settled
        (card(status="approved"), "local:mallory", TERMINAL, "deny", policy.Unsettled("refused"), NOW),
        (card(status="expired"), ALICE, TERMINAL, "approve", policy.Unsettled("already"), NOW),
        (card(), ALICE, TERMINAL, "maybe", policy.Unsettled("bad_button"), NOW),
        # a press at or after the expiry decides nothing, applied when it may (the timer not yet fired)
        (card(), ALICE, TERMINAL, "approve", policy.Settle("approved", cards.APPROVE), EXPIRES - 0.001),
        (card(), ALICE, TERMINAL, "approve", policy.Unsettled("expired"), EXPIRES),
        (card(), "local:mallory", TERMINAL, "approve", policy.Unsettled("refused"), EXPIRES + 1),
        (
            card("question", deciders=()),
            "local:bob",
            TERMINAL,
            "2",
            policy.Settle("answered", QUESTION_BUTTONS[1]),
            NOW,
        ),
        (card("question", deciders=()), "local:bob", TERMINAL, "2", policy.Unsettled("expired"), EXPIRES + 1),
        (card("question", deciders=()), "local:bob", ELSEWHERE, "2", policy.Unsettled("refused"), NOW),
    ],
)
def test_a_press(
    settling: policy.Card, clicker: str, where: ev.Route, button: str, outcome: policy.Outcome, at: float
) -> None:
    assert policy.press(settling, clicker, where, button, at) == outcome


@pytest.mark.parametrize(
    ("settling", "choice", "outcome"),
    [
        (card(), "approve", policy.Settle("approved", cards.APPROVE)),
        (card(), " Deny ", policy.Settle("denied", cards.DENY)),  # by id, any case and spacing
        (card(), "2", policy.Settle("denied", cards.DENY)),  # by number
        (card(), cards.APPROVE.label, policy.Settle("approved", cards.APPROVE)),  # by label
        (card(status="denied"), "approve", policy.Unsettled("already")),
        (card(), "perhaps", policy.Unsettled("bad_button")),
        (card("question"), "coffee", policy.Settle("answered", QUESTION_BUTTONS[1])),
        (card("question"), "approve", policy.Unsettled("bad_button")),  # a question has no yes or no
        (card("question"), "3", policy.Unsettled("bad_button")),
    ],
)
def test_a_choice_at_the_machine(settling: policy.Card, choice: str, outcome: policy.Outcome) -> None:
    assert policy.choose(settling, choice, NOW) == outcome


def test_a_choice_at_the_machine_after_the_expiry_decides_nothing() -> None:
    assert policy.choose(card(), "approve", EXPIRES) == policy.Unsettled("expired")
    assert policy.choose(card(status="approved"), "deny", EXPIRES) == policy.Unsettled("already")


def test_approve_and_deny_at_the_machine_mean_the_cards_own_yes_and_no() -> None:
    connect = ev.Button(id="connect:main", label="Connect")
    ignore = ev.Button(id="ignore", label="Ignore", style="danger")
    channel = policy.Card(
        kind="channel",
        status="pending",
        deciders=(ALICE,),
        route=TERMINAL,
        buttons=(connect, ignore),
        expires_at=EXPIRES,
    )
    assert policy.choose(channel, "approve", NOW) == policy.Settle("approved", connect)
    assert policy.choose(channel, "deny", NOW) == policy.Settle("denied", ignore)
    no_no = policy.Card(
        kind="channel", status="pending", deciders=(ALICE,), route=TERMINAL, buttons=(connect,), expires_at=EXPIRES
    )
    assert policy.choose(no_no, "deny", NOW) == policy.Unsettled("bad_button")


def test_a_clicker_is_named_like_the_router_names_users_and_cards_live_by_kind() -> None:
    assert policy.user_id("telegram", "42") == policy.user_id("telegram", "telegram:42") == "telegram:42"
    assert policy.ttl("credential") == 180.0 and policy.ttl("sender") == policy.LONG_TTL
    assert policy.direct_chat("nohandle", {}) is None


def test_a_request_expires_at_its_own_time_else_its_kinds_lifetime_from_when_it_was_asked() -> None:
    asked = request("agent_request")
    assert policy.expiry(asked, NOW) == NOW + policy.DEFAULT_TTL["agent_request"]
    own = ev.ApprovalRequest(
        id="r2", kind="agent_request", requester="runner", agent_group="main", card=asked.card, expires_at=EXPIRES
    )
    assert policy.expiry(own, NOW + 5000) == EXPIRES
