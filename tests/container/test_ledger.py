"""The agent runner's pure core: which rows each result settles, matched by uuid."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent.ledger import NAMED_AT_MOST, Ledger


def test_a_result_settles_exactly_the_prompts_it_names() -> None:
    ledger = Ledger()
    ledger.sent("a", [2], 2)
    ledger.sent("b", [4, 6], 6)
    ledger.taken("a")

    settled = ledger.result(["a"], error=False)

    assert settled.seqs == [2] and settled.anchor == 2
    assert list(ledger.open) == ["b"] and ledger.claimed == {4, 6}


def test_prompts_merged_into_one_turn_settle_together_answering_the_newest() -> None:
    ledger = Ledger()
    for uuid, seq in (("a", 2), ("b", 4), ("c", 6)):
        ledger.sent(uuid, [seq], seq)
        ledger.taken(uuid)

    settled = ledger.result(["a", "b", "c"], error=False)

    assert settled.seqs == [2, 4, 6] and settled.anchor == 6 and not ledger.busy


def test_a_result_naming_none_of_ours_settles_nothing() -> None:
    ledger = Ledger()
    ledger.sent("a", [2], 2)

    assert ledger.result(["someone-elses"], error=False).prompts == []
    assert ledger.result([], error=False).prompts == []
    assert list(ledger.open) == ["a"]


def test_a_full_list_also_settles_what_the_turn_took_in_beyond_it() -> None:
    ledger = Ledger()
    uuids = [f"u{i}" for i in range(NAMED_AT_MOST + 2)]
    for i, uuid in enumerate(uuids):
        ledger.sent(uuid, [2 * i + 2], 2 * i + 2)
        ledger.taken(uuid)

    settled = ledger.result(uuids[:NAMED_AT_MOST], error=False)

    assert len(settled.prompts) == NAMED_AT_MOST + 2 and not ledger.busy


def test_a_replay_that_is_not_ours_or_seen_twice_changes_nothing() -> None:
    ledger = Ledger()
    ledger.sent("a", [2], 2)

    assert ledger.taken("tool-result-uuid") is None
    assert ledger.taken(None) is None
    assert ledger.taken("a") is not None
    assert ledger.taken("a") is None


def test_when_claude_code_dies_answered_prompts_are_done_the_current_fails_the_unseen_go_again() -> None:
    ledger = Ledger()
    ledger.sent("answered", [2], 2)
    ledger.taken("answered")
    ledger.wrote_to_chat()
    ledger.sent("current", [4], 4)
    ledger.taken("current")
    ledger.sent("unseen", [6], 6)

    answered, failed, unseen = ledger.lost()

    assert [p.uuid for p in answered] == ["answered"]
    assert [p.uuid for p in failed] == ["current"]
    assert [p.uuid for p in unseen] == ["unseen"]
    assert not ledger.busy


def test_a_write_to_the_chat_answers_what_claude_code_has_taken_in_and_nothing_queued_behind_it() -> None:
    ledger = Ledger()
    ledger.sent("first", [2, 3], 4)  # a batch: a triggering row and the one riding with it
    ledger.sent("queued", [6], 6)
    assert ledger.in_conversation == []
    ledger.taken("first")

    assert ledger.in_conversation == [2, 3]  # what `answered` records with the write
    ledger.wrote_to_chat()
    answered, failed, unseen = ledger.lost()

    assert ([p.uuid for p in answered], failed, [p.uuid for p in unseen]) == (["first"], [], ["queued"])
