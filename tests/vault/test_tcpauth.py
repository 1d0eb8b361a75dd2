"""Who a connection on the vault's TCP listener is (services/vault/tcpauth.py, pure), as a table."""

from __future__ import annotations

import pytest

from services.vault import tcpauth
from services.vault.tcpauth import token_hash

GROUP, OTHER = "family", "other"


@pytest.mark.parametrize(
    ("bound", "token", "group", "refusal"),
    [
        (None, None, None, tcpauth.NO_TOKEN),
        (None, "good", GROUP, ""),
        (None, "stale", None, tcpauth.UNKNOWN_TOKEN),
        (GROUP, None, GROUP, ""),  # later requests on a connection that showed its token
        (GROUP, "good", GROUP, ""),
        (GROUP, "others", None, tcpauth.OTHER_GROUP),  # a token never changes a connection's group
        (GROUP, "stale", None, tcpauth.UNKNOWN_TOKEN),
    ],
)
def test_a_connection_is_the_group_its_token_names_for_its_whole_life(
    bound: str | None, token: str | None, group: str | None, refusal: str
) -> None:
    tokens = {token_hash("good"): GROUP, token_hash("others"): OTHER}
    assert tcpauth.identify(tokens, bound, token) == (group, refusal)


def test_every_stored_hash_is_compared_and_only_an_equal_one_names_a_group() -> None:
    tokens = {token_hash("a"): GROUP, token_hash("b"): OTHER}
    assert [tcpauth.group_of(tokens, t) for t in ("a", "b", "c", "")] == [GROUP, OTHER, None, None]
