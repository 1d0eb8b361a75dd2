"""Long messages split where a reader expects: paragraphs first, then lines, then words, never mid-character."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.channels.split import split_text, utf16_len


def squeeze(text: str) -> str:
    return re.sub(r"\s", "", text)


def test_a_message_within_the_limit_is_one_part() -> None:
    assert split_text("hello there", 4096) == ["hello there"]


def test_an_empty_or_blank_message_has_no_parts() -> None:
    assert split_text("", 10) == []
    assert split_text(" \n\n ", 10) == []


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    first, second = "a" * 60 + " " + "b" * 30, "c" * 50
    assert split_text(f"{first}\n\n{second}", 100) == [first, second]


def test_a_long_paragraph_splits_at_a_line_before_a_word() -> None:
    text = "one two three\nfour five six seven"
    assert split_text(text, 20) == ["one two three", "four five six seven"]


def test_lines_split_between_words() -> None:
    assert split_text("alpha beta gamma delta", 11) == ["alpha beta", "gamma delta"]


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_an_early_paragraph_break_does_not_leave_a_tiny_part() -> None:
    text = "Hi\n\n" + " ".join(["word"] * 30)
    parts = split_text(text, 60)
    assert parts[0].startswith("Hi\n\nword")
    assert all(len(p) <= 60 for p in parts)


def test_utf16_limits_never_cut_an_emoji_in_half() -> None:
    text = "😀" * 5  # 10 UTF-16 code units
    parts = split_text(text, 4, utf16_len)
    assert parts == ["😀😀", "😀😀", "😀"]


def test_indentation_survives_a_split_at_a_line() -> None:
    text = "def f():\n    return 1\n    # the end"
    assert split_text(text, 22) == ["def f():\n    return 1", "    # the end"]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab c\n😀é")), max_size=400),
    limit=st.integers(min_value=2, max_value=60),
)
def test_parts_fit_keep_order_and_lose_only_whitespace(text: str, limit: int) -> None:
    parts = split_text(text, limit, utf16_len)
    assert all(0 < utf16_len(p) <= limit for p in parts)
    assert all(p.strip() for p in parts)
    assert squeeze("".join(parts)) == squeeze(text)


def test_a_limit_below_two_units_is_refused() -> None:
    with pytest.raises(ValueError):
        split_text("abc", 1)
