"""The agent runner's fold of people's edits and deletes, decided at the moment it reads: tables."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clawden import sessiondb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent.revisions import Folded, fold, revision, targets

Message = sessiondb.InboundMessage

ROUTE = sessiondb.Routing("telegram", "42")


def chat(seq: int, text: str, *, trigger: bool = True, sender: str = "ann", name: str = "Ann") -> Message:
    return sessiondb.InboundMessage(
        id=f"m{seq}", kind="chat", content={"text": text}, routing=ROUTE, sender_id=sender, sender_name=name,
        trigger=trigger, seq=seq,
    )  # fmt: skip


def edit(seq: int, of: int, text: str, *, trigger: bool = True) -> sessiondb.InboundMessage:
    content = {"text": text, sessiondb.REVISION: "edit", sessiondb.REVISES: f"m{of}"}
    return sessiondb.InboundMessage(
        id=f"e{seq}", kind="chat", content=content, routing=ROUTE, sender_id="ann", sender_name="Ann",
        trigger=trigger, seq=seq,
    )  # fmt: skip


def delete(seq: int, of: int, *, sender: str | None = "ann", name: str | None = "Ann") -> sessiondb.InboundMessage:
    content = {"text": "", sessiondb.REVISION: "delete", sessiondb.REVISES: f"m{of}"}
    return sessiondb.InboundMessage(
        id=f"d{seq}", kind="chat", content=content, routing=ROUTE, sender_id=sender, sender_name=name,
        trigger=False, seq=seq,
    )  # fmt: skip


READ = {"m2": chat(2, "whats 2+")}  # what the agent has read already, by id


def seen(folded: Folded) -> list[tuple[int, str, bool, tuple[int, ...]]]:
    """What the agent is sent: (seq, text, triggers, rows settled with it)."""
    return [(r.message.seq, r.message.content["text"], r.message.trigger, r.riders) for r in folded.rows]


@pytest.mark.parametrize(
    ("pending", "sent", "withdrawn"),
    [
        pytest.param(
            [chat(2, "whats 2+"), edit(4, 2, "whats 2+2")],
            [(2, "whats 2+2", True, (4,))],
            [],
            id="edit before read: only the edited text, once, the edit settled with it",
        ),
        pytest.param(
            [edit(4, 2, "whats 2+2")],
            [(4, "Ann edited their earlier message #2 to: whats 2+2", True, ())],
            [],
            id="edit after read: a plain note",
        ),
        pytest.param(
            [chat(2, "whats 2+"), delete(4, 2)],
            [],
            [2, 4],
            id="delete before read: never seen, settled with its delete",
        ),
        pytest.param(
            [delete(4, 2)],
            [(4, "Ann deleted their earlier message #2; disregard it.", False, ())],
            [],
            id="delete after read: a note that waits for the next message",
        ),
        pytest.param(
            [edit(4, 9, "new words")],
            [(4, "Ann edited their earlier message to: new words", True, ())],
            [],
            id="edit of an unknown id: a note without a number",
        ),
        pytest.param(
            [chat(2, "whats 2+"), edit(4, 2, "whats 2+2"), delete(6, 2)],
            [],
            [2, 4, 6],
            id="edit then delete before read: nothing",
        ),
        pytest.param(
            [edit(4, 2, "whats 2+2"), delete(6, 2)],
            [(6, "Ann deleted their earlier message #2; disregard it.", False, (4,))],
            [],
            id="edit then delete after read: only the delete is said",
        ),
        pytest.param(
            [edit(4, 2, "one"), edit(6, 2, "two")],
            [(6, "Ann edited their earlier message #2 to: two", True, (4,))],
            [],
            id="two edits after read: only the last is said",
        ),
        pytest.param(
            [delete(4, 2), edit(6, 2, "late")],
            [(4, "Ann deleted their earlier message #2; disregard it.", False, (6,))],
            [],
            id="an edit after a delete changes nothing",
        ),
        pytest.param(
            [chat(2, "a"), edit(4, 2, "b"), edit(6, 2, "c"), chat(8, "next")],
            [(2, "c", True, (4, 6)), (8, "next", True, ())],
            [],
            id="two edits before read: the last text",
        ),
        pytest.param(
            [chat(2, "a"), delete(4, 2), edit(6, 2, "b")],
            [],
            [2, 4, 6],
            id="a delete before read stays a delete",
        ),
        pytest.param(
            [chat(2, "context", trigger=False), edit(4, 2, "better context", trigger=False), chat(6, "question")],
            [(2, "better context", False, (4,)), (6, "question", True, ())],
            [],
            id="an accumulated row is edited like any other",
        ),
    ],
)
def test_the_fold(
    pending: list[sessiondb.InboundMessage],
    sent: list[tuple[int, str, bool, tuple[int, ...]]],
    withdrawn: list[int],
) -> None:
    folded = fold(pending, {k: v for k, v in READ.items() if k in targets(pending)}, limit=10)

    assert seen(folded) == sent
    assert folded.withdrawn == withdrawn


def test_a_delete_names_who_deleted_when_it_was_not_the_author() -> None:
    folded = fold([delete(4, 2, sender="mod", name="Moderator")], READ, limit=10)

    assert seen(folded)[0][1] == "Moderator deleted Ann's earlier message #2; disregard it."


def test_a_delete_from_nobody_named_says_the_message_was_deleted() -> None:
    # Discord's MESSAGE_DELETE names no one.
    folded = fold([delete(4, 2, sender=None, name=None)], READ, limit=10)

    assert seen(folded)[0][1] == "The earlier message #2 was deleted; disregard it."


def test_an_edit_rides_with_its_row_past_the_limit_and_stays_pending() -> None:
    rows = [chat(2, "a"), chat(4, "b"), edit(6, 4, "b2"), edit(8, 2, "a2")]

    folded = fold(rows, {}, limit=1)

    assert seen(folded) == [(2, "a2", True, (8,))]  # #4 and its edit #6 wait for the next batch


def test_the_edited_row_keeps_its_attachments_and_id() -> None:
    original = sessiondb.InboundMessage(
        id="m2", kind="chat", content={"text": "see", "attachments": [{"name": "a.png"}], "platform_message_id": "7"},
        routing=ROUTE, seq=2,
    )  # fmt: skip

    row = fold([original, edit(4, 2, "see this")], {}, limit=0).rows[0]

    assert row.message.id == "m2"
    assert row.message.content == {"text": "see this", "attachments": [{"name": "a.png"}], "platform_message_id": "7"}


def test_only_rows_naming_an_edit_or_delete_are_revisions() -> None:
    assert revision(edit(4, 2, "x")) == ("edit", "m2")
    assert revision(chat(2, "x")) is None
    odd = sessiondb.InboundMessage(
        id="x", kind="chat", content={sessiondb.REVISION: "rename", sessiondb.REVISES: "m2"}, routing=ROUTE
    )
    assert revision(odd) is None
    assert targets([chat(2, "a"), edit(4, 2, "b"), edit(6, 9, "c")]) == {"m9"}


def test_chatter_kept_for_context_never_crowds_out_the_message_that_asks() -> None:
    chatter = [chat(seq, f"chat {seq}", trigger=False) for seq in (2, 4, 6, 8, 10)]

    folded = fold([*chatter, edit(12, 2, "chat 2, edited", trigger=False), chat(14, "@bot well?")], {}, limit=5)

    # The newest chatter that fits goes with the question; the older rides with the first row sent, unseen.
    assert seen(folded) == [
        (4, "chat 4", False, (2, 12)),
        (6, "chat 6", False, ()),
        (8, "chat 8", False, ()),
        (10, "chat 10", False, ()),
        (14, "@bot well?", True, ()),
    ]


def test_chatter_alone_waits_within_the_limit() -> None:
    chatter = [chat(seq, f"chat {seq}", trigger=False) for seq in (2, 4, 6)]

    assert [r.message.seq for r in fold(chatter, {}, limit=2).rows] == [2, 4]


def test_a_note_that_a_read_message_was_deleted_is_never_left_out_with_the_chatter() -> None:
    # The agent read #2; in a busy group, its deletion and an edit of it come among chatter past the prompt's limit.
    chatter = [chat(seq, f"chat {seq}", trigger=False) for seq in (4, 8, 10, 12, 14)]
    pending = [chatter[0], delete(6, 2), *chatter[1:], chat(16, "@bot so?")]

    folded = fold(pending, READ, limit=3)

    assert seen(folded) == [
        (6, "Ann deleted their earlier message #2; disregard it.", False, (4, 8, 10, 12)),
        (14, "chat 14", False, ()),
        (16, "@bot so?", True, ()),
    ]
    # With room for the question alone, the limit holds: everything before it rides with it.
    assert seen(fold(pending, READ, limit=1)) == [(16, "@bot so?", True, (4, 6, 8, 10, 12, 14))]
