"""The agent runner's answers to /context, /files and /compact, as a person reads them in the chat."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package

from clawden_agent import commands


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0"), (999, "999"), (1_000, "1k"), (6_300, "6.3k"), (1_000_000, "1m"), (1_250_000, "1.2m")]
)
def test_tokens_read_like_claude_codes(n: int, text: str) -> None:
    assert commands.tokens(n) == text


def test_context_names_the_total_and_what_takes_it_up() -> None:
    usage = {
        "totalTokens": 6_300,
        "maxTokens": 200_000,
        "percentage": 3,
        "categories": [
            {"name": "System prompt", "tokens": 1_925, "kind": "used"},
            {"name": "Messages", "tokens": 2_300},
            {"name": "MCP tools", "tokens": 0, "kind": "used"},
            {"name": "Free space", "tokens": 160_000, "kind": "free"},
            "not a category",
        ],
    }
    assert commands.context_text(usage) == (
        "The conversation takes 6.3k of 200k tokens of context (3%).\nIn it: System prompt 1.9k, Messages 2.3k."
    )
    assert commands.context_text({}) == "The conversation takes 0 of 0 tokens of context."


def test_compact_tells_the_sizes_or_what_claude_code_said() -> None:
    done = {"trigger": "manual", "pre_tokens": 5_585, "post_tokens": 2_031}
    assert commands.compacted_text(done, "") == "Compacted the conversation: 5,585 tokens down to 2,031."
    assert commands.compacted_text(None, "Not enough messages to compact.") == "Not enough messages to compact."
    assert commands.compacted_text({}, "  ") == "There was nothing to compact."


def test_files_lists_the_workspace_with_sizes_and_says_what_it_left_out(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.txt").write_bytes(b"x" * 2048)
    (tmp_path / "a.md").write_text("hi")
    (tmp_path / "big.bin").write_bytes(b"\0" * (3 * 2**20))
    os.symlink("/etc/passwd", tmp_path / "link")  # listed as the link it is, never followed

    files = commands.workspace_files(tmp_path)

    assert [p for p, _ in files] == ["a.md", "big.bin", "link", "notes/b.txt"]
    assert commands.files_text(files, limit=2) == (
        "The workspace holds 4 files (3.0 MiB):\na.md (2 B)\nbig.bin (3.0 MiB)\n… and 2 more."
    )
    assert commands.files_text([]) == "The workspace is empty."
    assert commands.files_text([("a.md", 2)]) == "The workspace holds 1 file (2 B):\na.md (2 B)"
    assert commands.size(5 * 2**30) == "5.0 GiB"


def test_the_system_prompt_mentions_clawden_only_where_the_admin_socket_is_mounted() -> None:
    from clawden_agent.loop import addendum

    with_cli, without = addendum("Molly", has_cli=True), addendum("Molly", has_cli=False)
    assert "You are Molly" in without and "`clawden`" not in without
    assert with_cli.startswith(without) and "`clawden --help`" in with_cli and "approval" in with_cli


def test_an_attachment_in_the_prompt_says_where_it_is_or_why_it_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    from clawden_agent.loop import _body

    from clawden.sessiondb import InboundMessage, Routing

    monkeypatch.delenv("CLAWDEN_SESSION_DIR", raising=False)  # the container's own mount
    files = [
        {"name": "a.txt", "mime": "text/plain", "size": 3, "path": "inbox/m1/a.txt"},
        {"name": "big.iso", "mime": "application/octet-stream", "size": 9, "error": "it is over the inbox's limit"},
        {"name": "photo.jpg", "mime": "image/jpeg", "size": 0},  # the bridge did not fetch it
    ]
    msg = InboundMessage(id="m1", kind="chat", content={"text": "see", "attachments": files}, routing=Routing("t", "1"))
    assert _body(msg).splitlines()[1:] == [
        "[attachment a.txt (text/plain, 3 bytes) at /workspace/session/inbox/m1/a.txt]",
        "[attachment big.iso (application/octet-stream, 9 bytes) (not saved: it is over the inbox's limit)]",
        "[attachment photo.jpg (image/jpeg, 0 bytes) (not downloaded)]",
    ]
