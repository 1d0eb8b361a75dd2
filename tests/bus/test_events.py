"""The bus contract: every event round-trips; bad payloads fail with a JSON path."""

from __future__ import annotations

import msgspec
import pytest

from clawden.bus import events as ev

ROUTE = ev.Route(channel="telegram", chat_id="42", thread_id="7")
SENDER = ev.Sender(id="telegram:1", name="Ada")
CARD = ev.Card(
    title="Allow?",
    body="GET api.github.com/user",
    buttons=(ev.Button(id="y", label="Approve", style="primary"), ev.Button(id="n", label="Deny", style="danger")),
)

EXAMPLES: list[ev.Event] = [
    ev.InboundMessage(
        route=ROUTE,
        message_id="m1",
        sender=SENDER,
        text="hi",
        sent_at=1.5,
        is_group=True,
        mentioned=True,
        attachments=(ev.Attachment(name="a.png", mime="image/png", size=3),),
    ),
    ev.InboundAction(route=ROUTE, action_id="a1", sender=SENDER, card_id="c1", button_id="y"),
    ev.OutboundMessage(id="o1", route=ROUTE, text="hello", session_id="s", agent_group="main", seq=3, card=CARD),
    ev.OutboundEdit(id="o2", route=ROUTE, target_message_id="99", text="edited"),
    ev.OutboundReaction(id="o3", route=ROUTE, target_message_id="99", emoji="👍"),
    ev.DeliveryReceipt(outbound_id="o1", route=ROUTE, ok=False, error="chat not found"),
    ev.Wake(
        session_id="s",
        agent_group="main",
        route=ROUTE,
        message=ev.WakeMessage(id="telegram:m1", kind="chat", text="hi", sender=SENDER),
    ),
    ev.TaskOp(
        op="create", request_id="r1", agent_group="main", prompt="news", schedule="0 8 * * 1", timezone="Europe/Berlin"
    ),
    ev.TaskDue(
        id="task:t-1:2026-01-05T08:00:00Z",
        task_id="t-1",
        session_id="s",
        agent_group="main",
        route=ROUTE,
        text="news",
        at=1767600000.0,
        script="true",
    ),
    ev.TaskOrphaned(
        task_id="t-1", run_id="task:t-1:2026-01-05T08:00:00Z", session_id="s", reason="session s no longer exists"
    ),
    ev.ApprovalRequest(
        id="ap1",
        kind="credential",
        requester="vault",
        agent_group="main",
        card=CARD,
        expires_at=10.0,
        context={"host": "api.github.com"},
    ),
    ev.ApprovalWithdrawn(id="ap1", requester="vault", reason="the agent hung up while it waited"),
    ev.ApprovalDecision(id="ap1", decision="approved", decided_by="telegram:1"),
    ev.AuditEvent(service="vault", kind="request", at=2.0, fields={"status": "200"}),
    ev.RunnerHeartbeat(
        runner="a", at=3.0, every=5.0, slots=8, running=3, queued=0, free=5, cpus=4, load=0.5, memory_available=2**30
    ),
    ev.DeliveryReceipt(
        outbound_id="o4",
        route=ROUTE,
        ok=False,
        error="part 2 of 2 unconfirmed",
        final=True,
        unconfirmed=True,
        platform_message_id="",
        part_ids=("42:7", ""),
    ),
    ev.Typing(id="typing:s:telegram:42:1", route=ROUTE, at=3.5, session_id="s"),
    ev.TypingOff(route=ROUTE, seq=12),
    # Router fields: a threaded platform, a wake with its group's named destinations (or none at
    # all), an approval request naming who may decide.
    ev.InboundMessage(
        route=ROUTE,
        message_id="m2",
        sender=SENDER,
        text="in a thread",
        sent_at=2.0,
        is_group=True,
        supports_threads=True,
    ),
    ev.Wake(
        session_id="s",
        agent_group="main",
        route=ROUTE,
        command="clear",
        message=ev.WakeMessage(id="telegram:m2:main", kind="chat", text="/clear", sender=SENDER, trigger=False),
        destinations=(
            ev.Destination(name="family", route=ev.Route(channel="telegram", chat_id="-100"), display_name="Family"),
        ),
    ),
    ev.Wake(
        session_id="s",
        agent_group="main",
        route=ROUTE,
        destinations=(),
        message=ev.WakeMessage(id="telegram:m3:main", kind="chat", text="hi"),
    ),
    ev.ApprovalRequest(
        id="rt-1",
        kind="sender",
        requester="router",
        agent_group="main",
        card=CARD,
        approvers=("telegram:1", "local:alice"),
    ),
    ev.ChatMoved(channel="telegram", old_chat_id="-42", new_chat_id="-10042", sent_at=3.0),
    # A topic (its own session), and messages the platform dropped unread.
    ev.InboundMessage(
        route=ev.Route(channel="telegram", chat_id="42", thread_id="7"),
        message_id="m4",
        sender=SENDER,
        text="in a topic",
        sent_at=4.0,
        supports_threads=True,
        topic=True,
    ),
    ev.MessagesLost(
        channel="telegram",
        marker="905",
        count=2,
        since=1.0,
        detected_at=90001.0,
        why="Telegram keeps messages for a bot 24 hours",
    ),
    # A person's edit of a message, and a deletion whose deleter the platform does not name.
    ev.InboundEdit(
        route=ev.Route(channel="slack", chat_id="C1"),
        message_id="1700000000.000100",
        edit_id="1700000005.000200",
        sender=SENDER,
        text="dinner at 9, not 8",
        edited_at=5.0,
    ),
    ev.InboundDelete(route=ev.Route(channel="discord", chat_id="c2"), message_id="m5", deleted_at=6.0),
    ev.Adopt(session_id="s", agent_group="main", route=ROUTE, epoch=2, from_runner="a", destinations=()),
    ev.SessionPlaced(session_id="s", agent_group="main", runner="b", epoch=2, at=7.0),
]


def test_examples_cover_every_event_type() -> None:
    assert {type(e) for e in EXAMPLES} == set(ev.Event.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event: ev.Event) -> None:
    data = ev.encode(event)
    assert ev.decode(data) == event
    assert ev.decoder_for(type(event)).decode(data) == event


def test_events_are_frozen() -> None:
    with pytest.raises(AttributeError):
        EXAMPLES[0].text = "changed"  # type: ignore[misc, union-attr]


@pytest.mark.parametrize(
    ("payload", "path_or_text"),
    [
        (b'{"type":"receipt","outbound_id":"o","route":{"channel":"x","chat_id":"1"},"ok":"yes"}', "$.ok"),
        (b'{"type":"receipt","route":{"channel":"x","chat_id":"1"},"ok":true}', "missing required field `outbound_id`"),
        (b'{"type":"outbound.teleport","id":"o"}', "$.type"),
        (
            b'{"type":"wake","session_id":"s","agent_group":"g","route":{"channel":"x","chat_id":1},'
            b'"message":{"id":"m","kind":"chat","text":"t"}}',
            "$.route.chat_id",
        ),
        (
            b'{"type":"wake","session_id":"s","agent_group":"g","route":{"channel":"x","chat_id":"1"},'
            b'"message":{"id":"m","kind":"gossip","text":"t"}}',
            "$.message.kind",
        ),
    ],
)
def test_bad_payload_is_rejected_with_its_json_path(payload: bytes, path_or_text: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=path_or_text.replace("$", r"\$").replace(".", r"\.")):
        ev.decode(payload)


def test_a_different_event_on_a_typed_subject_is_rejected() -> None:
    data = ev.encode(EXAMPLES[0])
    with pytest.raises(msgspec.ValidationError, match=r"\$\.type"):
        ev.decoder_for(ev.Wake).decode(data)


def test_oversized_text_is_rejected() -> None:
    big = ev.OutboundMessage(id="o", route=ROUTE, text="x" * (ev.MAX_TEXT + 1))
    with pytest.raises(msgspec.ValidationError, match=r"\$\.text"):
        ev.decode(ev.encode(big))


def test_unknown_fields_from_a_newer_producer_are_tolerated() -> None:
    data = b'{"type":"approval.decision","id":"a","decision":"denied","new_field":1}'
    assert ev.decode(data) == ev.ApprovalDecision(id="a", decision="denied")


def test_a_receipt_from_before_read_states_decodes_as_delivered_and_a_read_one_round_trips() -> None:
    old = b'{"type":"receipt","outbound_id":"o","route":{"channel":"whatsapp","chat_id":"1"},"ok":true}'
    assert ev.decoder_for(ev.DeliveryReceipt).decode(old).state == "delivered"
    read = ev.DeliveryReceipt(outbound_id="o", route=ROUTE, ok=True, state="read", platform_message_id="wamid.1")
    assert ev.decode(ev.encode(read)) == read
    with pytest.raises(msgspec.ValidationError, match=r"\$\.state"):
        ev.decode(old.replace(b'"ok":true', b'"ok":true,"state":"seen"'))


def test_a_wake_that_names_no_destinations_differs_from_one_whose_group_has_none() -> None:
    # None: the sender (a scheduler) does not know them, keep the session's; (): the group has none.
    data = (
        b'{"type":"wake","session_id":"s","agent_group":"g","route":{"channel":"x","chat_id":"1"},'
        b'"message":{"id":"m","kind":"task","text":"t"}}'
    )
    assert ev.decoder_for(ev.Wake).decode(data).destinations is None
    none_left = next(e for e in EXAMPLES if isinstance(e, ev.Wake) and e.destinations == ())
    assert ev.decoder_for(ev.Wake).decode(ev.encode(none_left)).destinations == ()


def test_natural_keys() -> None:
    assert EXAMPLES[0].key == "telegram:m1"  # type: ignore[union-attr]
    assert EXAMPLES[6].key == "s:telegram:m1"  # type: ignore[union-attr]
    assert EXAMPLES[-7].key == "telegram:moved:-42"  # type: ignore[union-attr]
    assert EXAMPLES[-5].key == "telegram:lost:905"  # type: ignore[union-attr]
    assert EXAMPLES[-4].key == "slack:edit:1700000000.000100:1700000005.000200"  # type: ignore[union-attr]
    assert EXAMPLES[-3].key == "discord:delete:m5"  # type: ignore[union-attr]
    assert EXAMPLES[-2].key == "s:adopt:2"  # type: ignore[union-attr]


# Found by tests/chaos/test_fuzz.py: an approval id with a dot passed decoding and then raised in the approvals
# service at each redelivery, when it became `approval.decision.<id>`; the runner made sessions/<group>/<session>
# folders of whatever a wake named.
@pytest.mark.parametrize(
    "payload",
    [
        # values that become a subject token
        b'{"type":"approval.decision","id":"a.b","decision":"approved"}',
        b'{"type":"approval.request","id":"","kind":"question","requester":"r","agent_group":"g","card":{"title":"t"}}',
        b'{"type":"receipt","outbound_id":"o","ok":true,"route":{"channel":"tele gram","chat_id":"1"}}',
        b'{"type":"task.op","op":"list","request_id":"r","agent_group":"g","runner":"run.*"}',
        # names that become a folder on the host
        b'{"type":"wake","session_id":"../keys","agent_group":"main","route":{"channel":"local","chat_id":"1"},'
        b'"message":{"id":"m","kind":"chat","text":"hi"}}',
        b'{"type":"wake","session_id":"s-1","agent_group":"..","route":{"channel":"local","chat_id":"1"},'
        b'"message":{"id":"m","kind":"chat","text":"hi"}}',
        b'{"type":"receipt","outbound_id":"o","ok":true,"route":{"channel":"local","chat_id":"1"},"session_id":"a/b"}',
        b'{"type":"task.op","op":"list","request_id":"r","agent_group":".hidden"}',
    ],
)
def test_a_name_that_becomes_a_subject_or_a_host_folder_is_refused_when_decoded(payload: bytes) -> None:
    with pytest.raises(msgspec.ValidationError, match="regex"):
        ev.decode(payload)
