"""Host and path patterns for secrets and rules, with OneCLI's semantics (pure).

Host: case-insensitive; exact, or with one ``*`` standing as a whole label: at the left it stands for
one or more labels (``*.example.com`` matches ``api.example.com`` and ``a.b.example.com`` but not
``example.com``), further in for exactly one (``s3.*.amazonaws.com``); ``*`` alone is any host. A
``*`` inside a label (``api.example.com*``) is refused: it would match ``api.example.com.evil.test``.
A pattern may name a port (``api.example.com:8443``): a rule without one holds on every port, a
secret without one is injected only on 443.
Path (the query string is never part of it, and it is matched in the gateway's one form, see
``paths``): ``*`` matches everything; ``/p/*`` matches ``/p`` and everything under ``/p/``; ``/p*``
is a plain prefix; a ``*`` inside matches within one segment (``/v1/models/*:predict``); anything
else must match exactly.
"""

from __future__ import annotations

import functools
import re
from typing import Any

HOST_PATTERN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9*.-]*[A-Za-z0-9*])?$")
SECRET_PORT = 443  # where a secret whose pattern names no port is injected


class PatternError(ValueError):
    """A pattern a person typed that cannot be used; the message says why."""


@functools.lru_cache(maxsize=1)
def _suffixes() -> tuple[Any, Any]:
    from publicsuffixlist import PublicSuffixList  # the list ships in the package: no download

    return PublicSuffixList(), PublicSuffixList(only_icann=True)


def too_broad(pattern: str) -> str | None:
    """Why a secret's host pattern reaches far more than one site, else None: its fixed part (what
    follows a ``*``, or the whole host) is a public suffix or shorter (``*.com``, ``*.co.uk``,
    ``*.github.io``, ``co.uk``). An exact host is judged by ICANN's suffixes only, so a service at a
    private suffix's own name (``s3.amazonaws.com``) stays possible."""
    host, _ = split_port(pattern)
    every, icann = _suffixes()
    if "*" in host:
        fixed = host.rpartition("*")[2].lstrip(".")
        if not fixed or every.is_public(fixed):
            return (
                f"{pattern!r} matches every site under the public suffix {fixed or '*'!r}; name the site "
                f"(api.example.com or *.example.com)"
            )
    elif icann.is_public(host):
        return f"{pattern!r} is a public suffix, not a site"
    return None


def split_port(pattern: str) -> tuple[str, int | None]:
    host, colon, port = pattern.rpartition(":")
    return (host, int(port)) if colon and port.isdigit() else (pattern, None)


def check_host_pattern(pattern: str) -> str:
    """The pattern, lower-cased, or PatternError: a hostname and maybe a port (no scheme or path), and
    at most one ``*``, standing as a whole label."""
    value = pattern.strip().lower()
    host, port = split_port(value)
    if not HOST_PATTERN.match(host) or ".." in host:
        raise PatternError(
            f"host pattern {pattern!r} must be a hostname like api.example.com or "
            "*.example.com, maybe with a port (api.example.com:8443); no scheme or path"
        )
    if port is not None and not 0 < port < 65536:
        raise PatternError(f"host pattern {pattern!r}: the port must be from 1 to 65535")
    if host.count("*") > 1:
        raise PatternError(f"host pattern {pattern!r} may hold one * only")
    if any("*" in label and label != "*" for label in host.split(".")):
        raise PatternError(
            f"host pattern {pattern!r}: a * must stand for a whole label (*.example.com), "
            "or it would also match hosts such as example.com.evil.test"
        )
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
    # At the left a * stands for one or more labels; further in (and in a pattern stored before
    # stars had to be whole labels), never for a dot.
    body = re.escape(head) + ((".+" if not head else "[^.]+") if star else "") + re.escape(tail)
    return re.compile(body + r"\Z")


def host_matches(pattern: str, host: str, port: int | None = None) -> bool:
    """Whether ``host`` (and ``port``, when given and the pattern names one) falls under ``pattern``."""
    name, wanted = split_port(pattern)
    if port is not None and wanted is not None and port != wanted:
        return False
    return _host_regex(name).match(host.lower().rstrip(".")) is not None


def secret_port(pattern: str) -> int:
    """The one port a secret with this host pattern is injected on."""
    return split_port(pattern)[1] or SECRET_PORT


@functools.lru_cache(maxsize=1024)
def _path_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    flags = re.S | (re.I if ignore_case else 0)
    if pattern == "*":
        return re.compile(r".*\Z", flags)
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
    return re.compile("/".join(segments) + suffix + r"\Z", flags)


def path_matches(pattern: str, path: str, *, ignore_case: bool = False) -> bool:
    """Whether ``path`` (no query string) falls under ``pattern``."""
    return _path_regex(pattern, ignore_case).match(path) is not None


def specificity(host_pattern: str, path_pattern: str) -> tuple[int, int, int]:
    """Sort key: exact hosts before wildcards, longer patterns before shorter ones."""
    return ("*" not in host_pattern, len(host_pattern), len(path_pattern) if path_pattern != "*" else 0)
