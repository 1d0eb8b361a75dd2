"""Whom a secret added without naming agent groups is granted to, for the CLI and the dashboard alike.

Least privilege, as OneCLI v2's per-agent grants: a GitHub or mail token must not silently reach every agent group,
nor one added later. The only group gets it by name; with several (or none), the owner must say which. The model
key alone goes to every group, since a group without it cannot answer at all (an `openai` key is a tool's key like
any other: no exception). The vault's own default (and its OneCLI-shaped HTTP API's) stays "every group"."""

from __future__ import annotations

from collections.abc import Collection

MODEL_TYPE = "anthropic"  # the model key: every agent needs it to answer
EVERY_GROUP = "*"


def default_grants(kind: str, groups: Collection[str]) -> list[str] | None:
    """The grants for a new secret of `kind` naming none, given the agent groups there are; None: ask the owner."""
    if kind == MODEL_TYPE:
        return [EVERY_GROUP]
    if len(groups) == 1:
        return sorted(groups)
    return None
