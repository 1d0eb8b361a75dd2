"""Which secret a request gets where several would write the same place in it (pure).

A secret writes certain places of a request (`injection.places`: a header, a query parameter, the path).
For one request and one place exactly one secret is injected: of those granted to the agent group that
match the request, the most specific, by

1. an exact host before a wildcard (``api.example.com`` before ``*.example.com``),
2. the longer host pattern, then the longer path pattern (``*``, every path, counts as none),
3. a grant naming the agent group before a grant to every group (``*``).

Two secrets that rank the same and could meet on one request are a tie: `ties` finds them, and the vault
refuses to store a new one (`clawden secrets add|grant`, the HTTP API), naming the other. A tie stored
before that check (an older vault.db) is settled by `choose` the same way every time: the secret added
first is injected (the one the check would have kept), and the tie is reported so the vault can say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.vault.catalog import ALL_GROUPS, Credential, Secret
from services.vault.injection import places
from services.vault.patterns import path_matches, secret_port, specificity, split_port

Rank = tuple[int, int, int, bool]
Tie = tuple[str, str]  # (the secret left out, the one injected instead)


def rank(secret: Secret, group: str) -> Rank:
    """How specific a secret is for a request of ``group``: a greater rank wins."""
    return (*specificity(secret.host_pattern, secret.path_pattern), group in secret.grants)


@dataclass(frozen=True, slots=True)
class Choice:
    injected: tuple[Credential, ...]  # at most one per place, in the order given
    tied: tuple[Tie, ...] = ()


def choose(candidates: Sequence[Credential], group: str) -> Choice:
    """One credential per place among ``candidates`` (granted to ``group``, matching the request): the
    highest rank, and of equal ranks the earliest added (then the first by name)."""

    def order(credential: Credential) -> tuple[object, ...]:
        exact, host, path, named = rank(credential.secret, group)
        return (not exact, -host, -path, not named, credential.secret.created_at, credential.name)

    holders: dict[str, Credential] = {}
    tied: list[Tie] = []
    for credential in sorted(candidates, key=order):
        wanted = sorted(places(credential.secret))
        taken = {holders[p].name: holders[p] for p in wanted if p in holders}
        if not taken:
            holders.update(dict.fromkeys(wanted, credential))
            continue
        mine = rank(credential.secret, group)
        tied += [(credential.name, other.name) for other in taken.values() if rank(other.secret, group) == mine]
    kept = {c.name for c in holders.values()}
    return Choice(tuple(c for c in candidates if c.name in kept), tuple(tied))


def ties(secret: Secret, others: Iterable[Secret]) -> list[Secret]:
    """The secrets among ``others`` (another name) that some request could get in the same place as
    ``secret``, ranked the same for some agent group: neither is more specific than the other."""
    return [other for other in others if other.name != secret.name and _tie(secret, other)]


def all_ties(secrets: Sequence[Secret]) -> list[tuple[Secret, Secret]]:
    """Every pair of ``secrets`` that ties, each once."""
    return [(a, b) for i, a in enumerate(secrets) for b in ties(a, secrets[i + 1 :])]


def shared_place(a: Secret, b: Secret) -> str:
    """A place both write, as a person reads it."""
    place = min(places(a) & places(b), key=lambda p: (p != "x-api-key", p))
    if place == "path":
        return "the path"
    return f"the query parameter {place[1:]}" if place.startswith("?") else place


def _tie(a: Secret, b: Secret) -> bool:
    return (
        bool(places(a) & places(b))
        and specificity(a.host_pattern, a.path_pattern) == specificity(b.host_pattern, b.path_pattern)
        and _granted_alike(a.grants, b.grants)
        and hosts_meet(a.host_pattern, b.host_pattern)
        and paths_meet(a.path_pattern, b.path_pattern)
    )


def _granted_alike(a: Sequence[str], b: Sequence[str]) -> bool:
    """Some agent group has both secrets the same way: both granted to every group, or both by its name."""
    return (ALL_GROUPS in a and ALL_GROUPS in b) or bool((set(a) - {ALL_GROUPS}) & (set(b) - {ALL_GROUPS}))


def hosts_meet(p: str, q: str) -> bool:
    """Whether one host falls under both secret host patterns (as `check_host_pattern` leaves them), on the
    one port a secret is injected on. A leading ``*`` stands for one or more labels, one further in for one."""
    if secret_port(p) != secret_port(q):
        return False
    x, y = split_port(p)[0].split("."), split_port(q)[0].split(".")
    if x[0] == "*" and y[0] == "*":
        n = min(len(x), len(y)) - 1  # a host long enough for both stars ends with both tails
        return _labels_meet(x[len(x) - n :], y[len(y) - n :])
    if y[0] == "*":
        x, y = y, x
    if x[0] == "*":
        tail = x[1:]
        return len(y) > len(tail) and _labels_meet(tail, y[len(y) - len(tail) :])
    return len(x) == len(y) and _labels_meet(x, y)


def _labels_meet(x: Sequence[str], y: Sequence[str]) -> bool:
    return all(a == b or "*" in (a, b) for a, b in zip(x, y, strict=True))


def paths_meet(p: str, q: str) -> bool:
    """Whether one path falls under both patterns: either is every path, they are one, or one matches the path
    the other spells out (each ``*`` read as a letter). Globs that meet only elsewhere are not seen here;
    `choose` settles them at the request as it settles a tie stored before the check."""
    return "*" in (p, q) or p == q or path_matches(p, q.replace("*", "x")) or path_matches(q, p.replace("*", "x"))
