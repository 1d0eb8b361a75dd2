"""Argument types for `clawden` options: a number out of range is refused by argparse in one line,
before anything is asked of a service (a 20-digit priority once reached SQLite as an OverflowError)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {low} to {high}")
        return value

    parse.__name__ = "number"  # argparse names the type in its own messages
    return parse


PRIORITY = int_between(-1_000_000, 1_000_000)
LIMIT = int_between(1, 100_000)
