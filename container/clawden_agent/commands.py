"""What the agent runner answers to an admin's /context, /files and /compact itself, in chat-sized text:
formatting only (the files' walk aside), so each answer is tested as a table."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILES_SHOWN = 40


def tokens(n: float) -> str:
    """1234 → 1.2k, 1000000 → 1m: Claude Code's own short form."""
    for size, unit in ((1_000_000, "m"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + unit
    return str(int(n))


def context_text(usage: Mapping[str, Any]) -> str:
    """Claude Code's context usage (`get_context_usage()`): the total, and what takes it up."""
    total, most = int(usage.get("totalTokens") or 0), int(usage.get("maxTokens") or 0)
    used = [
        f"{c.get('name', '?')} {tokens(int(c.get('tokens') or 0))}"
        for c in usage.get("categories") or []
        if isinstance(c, Mapping) and c.get("kind", "used") == "used" and c.get("tokens")
    ]
    share = f" ({usage['percentage']}%)" if isinstance(usage.get("percentage"), int | float) else ""
    line = f"The conversation takes {tokens(total)} of {tokens(most)} tokens of context{share}."
    return f"{line}\nIn it: {', '.join(used)}." if used else line


def compacted_text(metadata: Mapping[str, Any] | None, result: str) -> str:
    """The reply to /compact: the sizes before and after, or what Claude Code said instead."""
    if metadata and metadata.get("pre_tokens") is not None:
        before, after = int(metadata.get("pre_tokens") or 0), int(metadata.get("post_tokens") or 0)
        return f"Compacted the conversation: {before:,} tokens down to {after:,}."
    return result.strip() or "There was nothing to compact."


def size(n: int) -> str:
    for limit, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= limit:
            return f"{n / limit:.1f} {unit}"
    return f"{n} B"


def workspace_files(root: Path) -> list[tuple[str, int]]:
    """Every file under the group's folder (relative path, bytes), in path order; links are listed, never followed."""
    out: list[tuple[str, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                out.append((str(path.relative_to(root)), path.lstat().st_size))
            except OSError:  # gone meanwhile
                continue
    return sorted(out)


def files_text(files: list[tuple[str, int]], limit: int = FILES_SHOWN) -> str:
    if not files:
        return "The workspace is empty."
    lines = [f"{path} ({size(n)})" for path, n in files[:limit]]
    more = f"\n… and {len(files) - limit} more." if len(files) > limit else ""
    total = sum(n for _, n in files)
    count = f"{len(files)} file" + ("" if len(files) == 1 else "s")
    return f"The workspace holds {count} ({size(total)}):\n" + "\n".join(lines) + more
