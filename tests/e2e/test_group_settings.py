"""`clawden groups update` with the whole system running: the router sends the group's settings with
the next wake and the runner starts the group's next container with them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from tests.e2e.harness import Stack, Terminal

pytestmark = pytest.mark.docker
MODEL = "claude-group-model-7"
IDLE = 6  # the group's; config.toml's (the harness default) is half an hour


def clawden(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawden", *args], env=stack.env(), capture_output=True, text=True, timeout=60
    )


async def test_settings_set_with_the_cli_reach_the_groups_next_container(stack: Stack) -> None:
    changed = await asyncio.to_thread(
        clawden,
        stack,
        "groups",
        "update",
        "main",
        "--memory",
        "300m",
        "--pids",
        "200",
        "--model",
        MODEL,
        "--folder",
        "household",
        "--idle-timeout",
        str(IDLE),
    )
    assert changed.returncode == 0, changed.stderr

    async with Terminal(stack, "limits") as term:
        reply = await term.ask("hello with new limits", timeout=90)
        assert "hello with new limits" in reply.text
        [container] = [c for c in stack.containers() if c.labels["dev.clawden.session"] == reply.session_id]
        host = container.attrs["HostConfig"]
        assert (host["Memory"], host["PidsLimit"]) == (300 * 2**20, 200)
        mounts = {m["Destination"]: m["Source"] for m in container.attrs["Mounts"]}
        assert mounts["/workspace/agent"] == str(stack.home / "groups" / "household")
        agent_calls = stack.fake.messages_requests(with_tools=True)
        assert agent_calls and {r.body["model"] for r in agent_calls} == {MODEL}

        # The group's idle timeout, not config.toml's, stops the container once the turn is over.
        await stack.wait_until_idle(reply.session_id)
        deadline = time.monotonic() + IDLE + 20
        while any(c.id == container.id for c in stack.containers()):
            assert time.monotonic() < deadline, "the group's idle timeout did not stop its container"
            await asyncio.sleep(0.5)


async def test_a_setting_the_runner_cannot_apply_is_refused_at_the_cli(stack: Stack) -> None:
    refused = await asyncio.to_thread(clawden, stack, "groups", "update", "main", "--provider", "openai", "--pids", "1")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "clawden: provider 'openai': only 'claude' is available"
    assert "Traceback" not in refused.stderr
