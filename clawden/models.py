"""Which model names are Claude's: a name of another provider's model (`gpt-4o`) would be sent to
Anthropic as it is and fail at the first message, so Clawden warns when it is set."""

from __future__ import annotations

import re

# Claude Code's aliases, and the API's ids by family (claude-opus-4-1, claude-3-5-haiku-latest, ...).
ALIASES = ("default", "sonnet", "opus", "haiku", "opusplan", "best")
FAMILIES = ("opus", "sonnet", "haiku")
_CLAUDE_ID = re.compile(r"^claude-(?:[\d.-]+-)?(?:opus|sonnet|haiku)(?:-[\w.-]+)?$")


def model_warning(name: str) -> str | None:
    """None for a Claude model name (or none set); else one line saying why it is doubtful."""
    bare = name.strip().removesuffix("[1m]")
    if not bare or bare in ALIASES or _CLAUDE_ID.match(bare):
        return None
    return (
        f"{name!r} is not a Claude model name Clawden knows (claude-<family>-<version> with family "
        f"{', '.join(FAMILIES)}, or an alias: {', '.join(ALIASES[1:4])}); the vault sends it to Anthropic "
        "as it is, which refuses a model it does not have"
    )
