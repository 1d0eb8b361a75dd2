"""The README's quick start, followed as written on a fresh home: its `clawden` commands in order, the
model key given the way it says for a key that comes after `up`, and a first reply with no detour.
The one addition is config that points the vault at the fake model instead of api.anthropic.com."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawden import config
from tests.e2e.harness import Stack
from tests.fakes.anthropic import make_tls, start_in_thread

pytestmark = pytest.mark.docker
README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start() -> list[list[str]]:
    """The `clawden` command lines of the README's quick start, in order, without their comments."""
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    lines = [line for block in re.findall(r"```sh\n(.*?)```", section, re.S) for line in block.splitlines()]
    return [shlex.split(line, comments=True)[1:] for line in lines if line.startswith(".venv/bin/clawden ")]


def test_the_quick_start_gives_a_first_reply(tmp_path: Path, docker_client: object, agent_image: str) -> None:
    commands = quick_start()
    names = [c[0] for c in commands]
    assert names[:2] == ["init", "up"] and ["chat", "--once", "hello"] in commands, commands
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"} | {"CLAWDEN_HOME": str(home)}

    def clawden(args: list[str], value: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clawden", *args], env=env, input=value, capture_output=True, text=True, timeout=180
        )

    init = clawden(commands[0])
    assert init.returncode == 0 and "next: `clawden up`" in init.stdout, init.stdout + init.stderr
    fake = start_in_thread()
    tls = make_tls(["api.anthropic.com"], str(home / "run"))
    with (home / "config.toml").open("a") as file:
        file.write(
            f'\n[vault]\nextra_ca_file = "{tls.ca_file}"\n'
            f'host_map = {{"api.anthropic.com" = "{fake.call(fake.listen_tls(tls.server_context))}"}}\n'
        )
    cfg = config.load(home, environ={})
    key = f"sk-ant-api03-{secrets.token_urlsafe(24)}"
    up = subprocess.Popen(
        [sys.executable, "-m", "clawden", *commands[1]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    stack = Stack(home, cfg.install_id, key, fake, up, cfg.nats_url)
    try:
        assert up.stdout is not None
        os.set_blocking(up.stdout.fileno(), False)

        def console_says(text: str, timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while text not in "".join(stack.output):
                assert time.monotonic() < deadline and up.poll() is None, "".join(stack.output)
                line = up.stdout.readline() if up.stdout else ""
                if line:
                    stack.output.append(line)
                else:
                    time.sleep(0.05)  # nothing new on the console yet

        console_says("not ready: no model key")
        for args in commands[2:]:
            if args[0] == "chat" and "--once" not in args:
                continue  # the interactive chat: its --once form below stands for it
            done = clawden(args, value=key + "\n" if args[:2] == ["secrets", "add"] else "")
            assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
            if args[:2] == ["secrets", "add"]:
                console_says("all services ready")
            if args[:2] == ["chat", "--once"]:
                assert done.stdout.startswith("main> echo: ") and "hello" in done.stdout, done.stdout
        assert {r.headers.get("x-api-key") for r in fake.messages_requests(with_tools=True)} == {key}
    finally:
        stack.stop()
