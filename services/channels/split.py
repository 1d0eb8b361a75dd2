"""Splitting a long message into parts a platform accepts: at paragraphs, then lines, then words."""

from __future__ import annotations

from collections.abc import Callable

Measure = Callable[[str], int]

# Breaks tried in order; a break is taken only if the part before it is at least this full, so a
# paragraph break near the start does not leave a tiny part when a line break further on would do.
_BREAKS = ("\n\n", "\n", " ")
_MIN_FILL = 0.25


def utf16_len(text: str) -> int:
    """Telegram (and JavaScript platforms) count text in UTF-16 code units, not code points."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def split_text(text: str, limit: int, measure: Measure = len) -> list[str]:
    """Parts of at most `limit` (as `measure` counts), in order, none empty; only the whitespace
    at a break is dropped."""
    if limit < 2:
        raise ValueError("limit must be at least 2")
    parts: list[str] = []
    rest = text.strip("\n")
    while rest.strip():
        if measure(rest) <= limit:
            parts.append(rest.rstrip())
            break
        window = _fitting_prefix(rest, limit, measure)
        cut, skip = _best_break(rest[:window])
        part = rest[:cut].rstrip()
        if part.strip():
            parts.append(part)
        # Leading spaces stay (an indented line keeps its indent); blank lines between parts go.
        rest = rest[cut + skip :].lstrip("\n")
    return parts


def _fitting_prefix(text: str, limit: int, measure: Measure) -> int:
    """The length of the longest prefix within `limit`; never ends inside a surrogate pair."""
    lo, hi = 1, len(text)
    while lo < hi:  # measure is monotone in the prefix length
        mid = (lo + hi + 1) // 2
        if measure(text[:mid]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _best_break(window: str) -> tuple[int, int]:
    """Where to cut inside `window`, and how many separator characters to drop there."""
    for sep in _BREAKS:
        at = window.rfind(sep)
        if at > 0 and at >= len(window) * _MIN_FILL:
            return at, len(sep)
    return len(window), 0  # one long word: a hard cut
