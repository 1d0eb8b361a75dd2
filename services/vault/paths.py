"""One form for a request path, before any rule sees it (pure).

Servers undo tricks in a path before they route it: Node's URL parser resolves `..` and `%2e%2e` and
turns `\\` into `/`, uvicorn decodes `%70` and `%2F`, many collapse `//`. A rule matched against the
path as typed would miss what the server then serves. So the gateway brings each path to one form and sends
exactly that form upstream; rules and secret scopes match it with its remaining escapes decoded too
(`RequestHead.rule_path`: `m%3Apredict` meets a rule on `*:predict`). What it cannot bring to one
form safely it refuses.

- percent-escapes of unreserved characters (letters, digits, `-._~`) are decoded; other escapes keep
  their meaning and get upper-case hex;
- dot segments are removed (RFC 3986, 5.2.4), and runs of `/` collapse to one;
- refused: an escaped `/` or `\\` (`%2F`, `%5C`), a raw `\\`, `#`, `;` (matrix parameters), a NUL
  (`%00`), a malformed escape, and any byte outside RFC 3986's path characters.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# RFC 3986 pchar less ";" (refused) and "%" (escapes are read on their own), plus "/".
PATH_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,=:@/")
QUERY_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%")
REFUSED_ESCAPES = {"2F": "an escaped /", "5C": "an escaped \\", "00": "a NUL"}
ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


class PathRefused(ValueError):
    """A path the gateway will not forward; the message says what in it and why."""


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # normalised: what rules and scopes match, and what goes upstream
    query: str  # as sent (checked for characters only)

    @property
    def raw(self) -> bytes:
        return (self.path + (f"?{self.query}" if self.query else "")).encode("ascii")


def normalise(target: bytes) -> Target:
    """The request target's one form, or PathRefused."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise PathRefused("the path holds bytes that are not ASCII; percent-encode them") from None
    if "#" in text:
        raise PathRefused("a fragment (#) never belongs in a request")
    path, question, query = text.partition("?")
    if not path.startswith("/"):
        raise PathRefused("the path must start with /")
    if bad := set(query) - QUERY_CHARS:
        raise PathRefused(f"the query holds {_named(bad)}")
    return Target(_remove_dot_segments(_decode_unreserved(path)), query if question else "")


def _decode_unreserved(path: str) -> str:
    if "\\" in path:
        raise PathRefused("a \\ in the path (servers read it as /)")
    if ";" in path:
        raise PathRefused("a ; in the path (matrix parameters are not forwarded)")
    if "%" in ESCAPE.sub("", path):
        raise PathRefused("a % that does not start an escape like %41")
    if bad := set(ESCAPE.sub("", path)) - PATH_CHARS:
        raise PathRefused(f"the path holds {_named(bad)}")

    def one(match: re.Match[str]) -> str:
        code = match.group(1).upper()
        if code in REFUSED_ESCAPES:
            raise PathRefused(f"{REFUSED_ESCAPES[code]} (%{code}) in the path")
        char = chr(int(code, 16))
        return char if char in UNRESERVED else f"%{code}"

    return ESCAPE.sub(one, path)


def _remove_dot_segments(path: str) -> str:
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        elif segment or last:  # an empty segment inside is a doubled /: collapsed
            out.append(segment)
    return "/" + "/".join(out)


def _named(chars: set[str]) -> str:
    return ", ".join(repr(c) for c in sorted(chars))
