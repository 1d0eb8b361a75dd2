"""Host and path patterns for secrets and rules, with OneCLI's semantics (pure).

Host: case-insensitive; exact, or with one ``*`` standing for at least one character
(``*.example.com`` matches ``api.example.com`` but not ``example.com``; ``s3.*.amazonaws.com``).
Path (the query string is never part of it): ``*`` matches everything; ``/p/*`` matches ``/p`` and
everything under ``/p/``; ``/p*`` is a plain prefix; a ``*`` inside matches within one segment
(``/v1/models/*:predict``); anything else must match exactly.
"""

from __future__ import annotations

import functools
import re

HOST_PATTERN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9*.-]*[A-Za-z0-9*])?$")


class PatternError(ValueError):
    """A pattern a person typed that cannot be used; the message says why."""


def check_host_pattern(pattern: str) -> str:
    """The pattern, lower-cased, or PatternError: a hostname only (no scheme, port, path), one ``*``."""
    value = pattern.strip().lower()
    if not HOST_PATTERN.match(value) or ".." in value:
        raise PatternError(f"host pattern {pattern!r} must be a hostname like api.example.com or "
                           "*.example.com (no scheme, port or path)")
    if value.count("*") > 1:
        raise PatternError(f"host pattern {pattern!r} may hold one * only")
    return value


def check_path_pattern(pattern: str) -> str:
    value = pattern.strip() or "*"
    if value != "*" and not value.startswith("/"):
        raise PatternError(f"path pattern {pattern!r} must be * or start with /")
    if any(c in value for c in "?# \t\r\n"):
        raise PatternError(f"path pattern {pattern!r} may not hold a query, fragment or spaces")
    return value


@functools.lru_cache(maxsize=1024)
def _host_regex(pattern: str) -> re.Pattern[str]:
    head, star, tail = pattern.lower().partition("*")
    body = re.escape(head) + (".+" if star else "") + re.escape(tail)
    return re.compile(body + r"\Z")


def host_matches(pattern: str, host: str) -> bool:
    return _host_regex(pattern).match(host.lower().rstrip(".")) is not None


@functools.lru_cache(maxsize=1024)
def _path_regex(pattern: str) -> re.Pattern[str]:
    if pattern == "*":
        return re.compile(r".*\Z", re.S)
    suffix = ""
    if pattern.endswith("/*"):
        pattern, suffix = pattern[:-2], r"(?:/.*)?"
    elif pattern.endswith("*") and "*" not in pattern[:-1]:
        pattern, suffix = pattern[:-1], r".*"
    segments = []
    for segment in pattern.split("/"):
        if segment == "*":
            segments.append(r"[^/]+")
        else:
            segments.append(r"[^/]*".join(re.escape(part) for part in segment.split("*")))
    return re.compile("/".join(segments) + suffix + r"\Z", re.S)


def path_matches(pattern: str, path: str) -> bool:
    """Whether ``path`` (no query string) falls under ``pattern``."""
    return _path_regex(pattern).match(path) is not None


def specificity(host_pattern: str, path_pattern: str) -> tuple[int, int, int]:
    """Sort key: exact hosts before wildcards, longer patterns before shorter ones."""
    return ("*" not in host_pattern, len(host_pattern), len(path_pattern) if path_pattern != "*" else 0)
