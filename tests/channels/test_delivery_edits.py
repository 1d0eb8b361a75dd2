"""Edits of a message that went out in several parts: its text parts refilled, the ones no longer needed
removed, its files left alone; and the sent-log that knows which part is which, migrated in place."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from services.channels.delivery import PartEdit, plan_edit
from services.channels.state import SCHEMA, BridgeState, Send


def sent(*kinds: str) -> dict[int, Send]:
    return {i: Send(i, "sent", f"c:{i + 1}", "", kind) for i, kind in enumerate(kinds)}  # type: ignore[arg-type]


def test_a_shorter_text_refills_the_first_parts_and_removes_the_rest() -> None:
    edits = plan_edit("c:3", sent("text", "text", "text"), "one\n\ntwo", 6, len)
    assert edits == [PartEdit("c:1", "one"), PartEdit("c:2", "two", buttons=True), PartEdit("c:3", remove=True)]


def test_a_longer_text_than_the_parts_hold_is_cut_at_the_last_part() -> None:
    edits = plan_edit("c:2", sent("text", "text"), "aaaaaa\n\nbbbbbb\n\ncccccc", 8, len)
    assert edits == [PartEdit("c:1", "aaaaaa"), PartEdit("c:2", "bbbbbb …", buttons=True)]


def test_an_edit_aimed_at_the_file_of_a_message_changes_its_text_not_the_file() -> None:
    assert plan_edit("c:2", sent("text", "file"), "new words", 20, len) == [PartEdit("c:1", "new words", buttons=True)]


def test_a_message_of_files_only_or_unknown_to_the_log_is_edited_where_the_target_points() -> None:
    assert plan_edit("c:2", sent("file", "file"), "caption", 20, len) == [PartEdit("c:2", "caption", buttons=True)]
    assert plan_edit("x:9", {}, "words", 20, len) == [PartEdit("x:9", "words", buttons=True)]
    # A part logged before kinds were kept ('') is not taken for text.
    assert plan_edit("c:2", sent("", ""), "words", 20, len) == [PartEdit("c:2", "words", buttons=True)]


async def test_a_sent_log_from_before_part_kinds_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "telegram.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    old.execute("INSERT INTO sends VALUES ('o1', 0, 'sent', '5:10', '', 1.0)")
    old.commit()
    old.close()
    state = await BridgeState.open(path)
    try:
        assert await state.message_of("5:10") == ("o1", {0: Send(0, "sent", "5:10", "", "")})
        await state.mark("o2", 0, "sending", kind="file")
        await state.mark("o2", 0, "sent", "5:11")  # a later mark without a kind keeps it
        found = await state.message_of("5:11")
        assert found is not None and found[0] == "o2" and found[1][0].tried_at > 0  # when it first went out
        assert replace(found[1][0], tried_at=0.0) == Send(0, "sent", "5:11", "", "file")
        assert await state.message_of("5:12") is None
    finally:
        await state.close()
    again = await BridgeState.open(path)  # a second start applies nothing twice
    await again.close()


async def test_a_second_edit_aimed_at_a_part_the_first_took_away_refills_what_is_left(tmp_path: Path) -> None:
    """The receipt names the last part (c:3); an edit that shortens the message takes it away, and the next edit,
    aimed at c:3 again, must still find the message and change the part that shows its text."""
    state = await BridgeState.open(tmp_path / "telegram.db")
    try:
        for i in range(3):
            await state.mark("o1", i, "sent", f"c:{i + 1}", kind="text")
        first = await state.message_of("c:3")
        assert first is not None
        edits = plan_edit("c:3", first[1], "short", 6, len)
        assert edits == [
            PartEdit("c:1", "short", buttons=True),
            PartEdit("c:2", remove=True),
            PartEdit("c:3", remove=True),
        ]
        for change in edits:
            if change.remove:
                await state.removed(change.target)
        again = await state.message_of("c:3")
        assert again is not None and again[0] == "o1"
        assert plan_edit("c:3", again[1], "again", 6, len) == [PartEdit("c:1", "again", buttons=True)]
    finally:
        await state.close()
