"""The CLI against a running Clawden: a typo is refused with one line that names the fix, never a
traceback, and nothing is stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import Stack
from tests.ops.conftest import fresh_home

pytestmark = pytest.mark.process  # each test runs the `clawden` command as a process


def clawden(stack: Stack, *args: str, value: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawden", *args],
        env=stack.env(),
        input=value,
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored(stack: Stack) -> tuple[object, object]:
    return (
        json.loads(clawden(stack, "secrets", "list", "--json").stdout),
        json.loads(clawden(stack, "rules", "list", "--json").stdout),
    )


@pytest.mark.docker
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("rules", "add", "r1", "--action", "block", "--host", "api.github.com", "--agent", "nosuch"),
            "no agent group nosuch; the groups are: main",
        ),
        (
            ("rules", "add", "r2", "--action", "block", "--host", "api.github.com", "--limit", "5"),
            "--limit and --window belong to rate_limit rules, not to a block rule",
        ),
        (
            ("rules", "add", "r3", "--action", "manual_approval", "--host", "api.github.com", "--window", "hour"),
            "--limit and --window belong to rate_limit rules",
        ),
        (
            ("rules", "add", "r4", "--action", "block", "--host", "api.github.com", "--method", "FROB"),
            "'FROB' is not an HTTP method; give one of CONNECT, DELETE",
        ),
        (
            ("secrets", "add", "gh", "--type", "generic", "--host", "*.com", "--header", "Authorization"),
            "matches every site under the public suffix 'com'",
        ),
        (
            ("secrets", "add", "gh", "--type", "generic", "--host", "*.co.uk", "--header", "Authorization"),
            "matches every site under the public suffix 'co.uk'",
        ),
        (
            (
                "secrets",
                "add",
                "gh",
                "--type",
                "generic",
                "--host",
                "api.github.com",
                "--header",
                "Authorization",
                "--agent",
                "nosuch",
            ),
            "no agent group nosuch",
        ),
        (
            ("secrets", "add", "anthropic", "--type", "generic", "--host", "evil.test", "--header", "X"),
            "the anthropic secret is the model key: its type is anthropic and its host api.anthropic.com",
        ),
        (("secrets", "add", "anthropic", "--type", "anthropic"), "a secret named anthropic exists; add --replace"),
        (("egress", "nosuch", "allowlist"), "no agent group nosuch"),
    ],
)
def test_a_typo_is_refused_in_one_line_and_changes_nothing(stack: Stack, args: tuple[str, ...], says: str) -> None:
    before = stored(stack)

    out = clawden(stack, *args, value="ghp_a-token-that-must-go-nowhere-1234")

    assert out.returncode != 0 and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2, out.stderr
    assert stored(stack) == before


@pytest.mark.parametrize("args", [("chat", "--once", "hello"), ("chat", "--chat", "my chat", "--once", "hi")])
def test_chat_with_clawden_stopped_says_what_to_do_in_two_lines(tmp_path: Path, args: tuple[str, ...]) -> None:
    cfg = fresh_home(tmp_path / "home")  # NATS is not running there

    out = subprocess.run(
        [sys.executable, "-m", "clawden", "--home", cfg.home, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CLAWDEN_HOME": cfg.home},
    )

    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("clawden: "), out.stderr
    assert ("cannot reach NATS" in out.stderr and "clawden up" in out.stderr) or "a chat name is one word" in out.stderr
