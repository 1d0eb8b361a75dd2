"""The pure rules: card delivery, who may decide, what a button means, and the card's words."""

from __future__ import annotations

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
