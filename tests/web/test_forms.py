"""The dashboard's form numbers, as tables: an empty field is None, anything else a number or the CLI's words."""

from __future__ import annotations

import pytest

from services.web.backend import BackendError
from services.web.dashboard import number, whole


@pytest.mark.parametrize(("text", "value"), [("", None), ("  ", None), ("1", 1), ("100000", 100_000), (" 42 ", 42)])
def test_a_whole_number_in_range_is_taken(text: str, value: int | None) -> None:
    assert whole(text, "limit") == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1.5", "limit: '1.5' is not a whole number"),
        ("ten", "limit: 'ten' is not a whole number"),
        ("0", "limit: 0 is out of range: give 1 to 100000"),
        ("100001", "limit: 100001 is out of range: give 1 to 100000"),
        ("-3", "limit: -3 is out of range: give 1 to 100000"),
    ],
)
def test_a_whole_number_out_of_range_or_not_whole_gets_the_clis_words(text: str, why: str) -> None:
    with pytest.raises(BackendError) as refused:
        whole(text, "limit")
    assert str(refused.value) == why


@pytest.mark.parametrize(("text", "value"), [("", None), ("1.5", 1.5), ("-1", -1.0), ("0", 0.0)])
def test_a_number_is_taken_as_given_and_its_range_left_to_the_service(text: str, value: float | None) -> None:
    assert number(text, "cpus") == value


def test_a_number_that_is_none_says_so() -> None:
    with pytest.raises(BackendError, match="cpus: 'many' is not a number"):
        number("many", "cpus")
