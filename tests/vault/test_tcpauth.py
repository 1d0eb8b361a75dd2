"""Who a connection on the vault's TCP listener is (services/vault/tcpauth.py, pure), as a table."""

from __future__ import annotations

import pytest

from services.vault import tcpauth
from services.vault.tcpauth import token_hash

GROUP, OTHER = "family", "other"


def shown(token: str | None) -> tcpauth.Binding | None:
    """What a connection is bound to after showing `token` for GROUP (or OTHER, for "others")."""
    return tcpauth.Binding(token_hash(token), OTHER if token == "others" else GROUP) if token else None


@pytest.mark.parametrize(
    ("bound", "token", "binding", "refusal"),
    [
        (None, None, None, tcpauth.NO_TOKEN),
        (None, "good", "good", ""),
        (None, "stale", None, tcpauth.UNKNOWN_TOKEN),
        ("good", None, "good", ""),  # later requests on a connection that showed its token
        ("good", "good", "good", ""),
        ("good", "others", None, tcpauth.OTHER_GROUP),  # a token never changes a connection's group
        ("good", "stale", None, tcpauth.UNKNOWN_TOKEN),
        ("stale", None, None, tcpauth.REVOKED),  # the token it showed was withdrawn since
        ("stale", "good", "good", ""),  # its group's token of now, shown again
    ],
)
def test_a_connection_is_the_group_its_token_names_while_the_token_lasts(
    bound: str | None, token: str | None, binding: str | None, refusal: str
) -> None:
    tokens = {token_hash("good"): GROUP, token_hash("others"): OTHER}
    assert tcpauth.identify(tokens, shown(bound), token) == (shown(binding), refusal)


def test_a_binding_is_revoked_when_its_token_goes_or_names_another_group() -> None:
    bound = tcpauth.Binding(token_hash("t"), GROUP)
    assert not tcpauth.revoked({token_hash("t"): GROUP, token_hash("u"): OTHER}, bound)
    assert tcpauth.revoked({token_hash("u"): GROUP}, bound)
    assert tcpauth.revoked({token_hash("t"): OTHER}, bound)


def test_every_stored_hash_is_compared_and_only_an_equal_one_names_a_group() -> None:
    tokens = {token_hash("a"): GROUP, token_hash("b"): OTHER}
    assert [tcpauth.group_of(tokens, t) for t in ("a", "b", "c", "")] == [GROUP, OTHER, None, None]


# -- which runner may register a session's container token --


@pytest.mark.parametrize(
    ("asker", "group", "placed", "refused"),
    [
        ("b", GROUP, ("b", GROUP), ""),  # its own session, for the session's group
        ("b", GROUP, ("a", GROUP), "it is placed on a"),
        ("a", GROUP, ("b", GROUP), "it is placed on b"),  # the install's own runner too, once a session moved
        ("b", OTHER, ("b", GROUP), "the session belongs to family"),  # never as another group
        ("a", GROUP, None, ""),  # no placement record: the install's own runner, as before placements
        ("a", OTHER, None, ""),
        ("b", GROUP, None, "only this install's own runner (a)"),
    ],
)
def test_a_runner_may_register_a_token_only_for_a_session_placed_on_it_for_its_group(
    asker: str, group: str, placed: tuple[str, str] | None, refused: str
) -> None:
    said = tcpauth.registration_refusal(asker, "a", "s1", group, placed)
    assert (said == "") == (refused == "") and refused in said
    assert not said or (f"runner {asker}" in said and "s1" in said)
