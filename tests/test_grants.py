"""Whom a secret added naming no agent group goes to: the only group by name, the model key every group, and
otherwise nobody until the owner says (the CLI and the dashboard share this rule)."""

from __future__ import annotations

import pytest

from clawden.grants import default_grants


@pytest.mark.parametrize(
    ("kind", "groups", "grants"),
    [
        ("generic", ["main"], ["main"]),  # by name: a group added later does not get it
        ("openai", ["main"], ["main"]),  # a tool's key, not the model's
        ("generic", ["main", "work"], None),  # the owner must say which
        ("openai", ["main", "work"], None),
        ("aws", [], None),  # no group yet: nothing to grant it to
        ("anthropic", ["main", "work"], ["*"]),  # the model key: a group without it cannot answer
        ("anthropic", [], ["*"]),
    ],
)
def test_a_secret_naming_no_group_is_granted_by_least_privilege(
    kind: str, groups: list[str], grants: list[str] | None
) -> None:
    assert default_grants(kind, groups) == grants
