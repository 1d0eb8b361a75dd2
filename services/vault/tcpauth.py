"""Who a connection on the vault's TCP listener is, from the proxy token it shows (pure).

A Unix socket names its group by being that group's; a TCP connection names it with a token in
``Proxy-Authorization`` on its first request: a third-party agent's proxy token, or the per-container
token a runner registered (`runner.vault_transport = "tcp"`). The vault keeps only each token's sha256.
Once a connection showed a good token it is that group's for as long as the token is: the in-container relay
adds the token to a connection's first request only (it does not parse the rest), so a token that is removed
ends the connections that showed it (`revoked`), rather than being asked for again on their later requests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

NO_TOKEN = "This gateway needs the agent group's proxy token (Proxy-Authorization: Basic)."
UNKNOWN_TOKEN = (
    "The proxy token is unknown or no longer valid (a container's token is replaced each time the container is"
    " made): the container must be started again by its runner."
)
OTHER_GROUP = "This connection belongs to another agent group: a token cannot change a connection's group."
REVOKED = (
    "The proxy token this connection showed is no longer valid: the container must be started again by its runner."
)


@dataclass(frozen=True, slots=True)
class Binding:
    """What a connection on the listener showed: its token's sha256, and the group that token named."""

    digest: str
    group: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def group_of(tokens: Mapping[str, str], token: str) -> str | None:
    """The group whose stored sha256 is the token's. Every stored hash is compared, each in constant
    time, so how long this takes says nothing about how near a guess came."""
    digest = token_hash(token)
    found = None
    for stored, group in tokens.items():
        if hmac.compare_digest(stored, digest):
            found = group
    return found


def identify(tokens: Mapping[str, str], bound: Binding | None, token: str | None) -> tuple[Binding | None, str]:
    """(what the connection is bound to for this request, "") or (None, why it is refused, for a 407).

    ``bound``: what the connection's earlier request showed, or None."""
    if token is None:
        if bound is None:
            return None, NO_TOKEN
        return (None, REVOKED) if revoked(tokens, bound) else (bound, "")
    group = group_of(tokens, token)
    if group is None:
        return None, UNKNOWN_TOKEN
    if bound is not None and group != bound.group:
        return None, OTHER_GROUP
    return Binding(token_hash(token), group), ""


def revoked(tokens: Mapping[str, str], bound: Binding) -> bool:
    """Whether the token a connection showed no longer names its group (withdrawn, or its container made again).
    A plain lookup: the digest is the vault's own, from a token already checked, so its timing tells nothing."""
    return tokens.get(bound.digest) != bound.group


# -- which runner may register a container's token (`vault.container-token.<runner>`) --


def registration_refusal(
    asker: str, own_runner: str, session_id: str, agent_group: str, placed: tuple[str, str] | None
) -> str:
    """Why the runner `asker` may not register (or withdraw) a token for this session of `agent_group`; "" when
    it may. `placed`: the session's placement (runner, agent group), or None where the router recorded none (a
    session made before placements were): then only `own_runner`, the vault's install's own runner, may. So a
    runner host taken over can name tokens only for the sessions placed on it, each for its own group."""
    if placed is None:
        if asker == own_runner:
            return ""
        return (
            f"runner {asker} may not register a container token for session {session_id}: it has no placement"
            f" record, and only this install's own runner ({own_runner}) may register one for such a session"
        )
    runner, group = placed
    if runner != asker:
        return f"runner {asker} may not register a container token for session {session_id}: it is placed on {runner}"
    if group != agent_group:
        return (
            f"runner {asker} may not register a container token for session {session_id} as agent group"
            f" {agent_group}: the session belongs to {group}"
        )
    return ""
