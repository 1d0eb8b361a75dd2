"""A group's tuning, skills and admin commands with the whole system running (router, runner, real agent
containers, the fake model): what `clawden groups update` and `clawden groups skills` set is what the
model is sent, waiting messages go in prompts of the group's size, and an admin's /cost is answered by the
agent runner without the model.

"Waiting" is exact, not timed: the runner has one container slot, held by a turn the fake model does not
answer, so the batch chat's messages all wait in its inbound.db until the model is released."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pytest

from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_revisions import rows_stored, said_to_the_model
from tests.eventually import eventually
from tests.fakes.anthropic import Hang, is_compaction

pytestmark = pytest.mark.docker

STACK_OPTIONS = {"runner": "max_containers = 1\nqueue_notice_after = 3600"}


def clawden(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "clawden", *args], env=stack.env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def skill(stack: Stack, name: str, description: str) -> None:
    folder = stack.home / "groups" / "global" / "skills" / name
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: {description}\n---\nAnswer in one line.\n")


async def test_tuning_skills_and_global_memory_reach_the_model_and_prompts_take_the_groups_size(
    stack: Stack,
) -> None:
    (stack.home / "groups" / "global").mkdir(parents=True, exist_ok=True)
    (stack.home / "groups" / "global" / "CLAUDE.md").write_text("The household's wifi is called PINEAPPLE-7.\n")
    skill(stack, "tide-tables", "Reads the QUOKKA-TIDE tables for the harbour")
    skill(stack, "secret-recipes", "Knows the WOMBAT-SECRET recipes")
    run = asyncio.to_thread
    await run(clawden, stack, "groups", "update", "main", "--effort", "max", "--assistant-name", "Pip")
    await run(clawden, stack, "groups", "update", "main", "--max-messages-per-prompt", "5", "--skills", "all")
    await run(clawden, stack, "groups", "skills", "disable", "main", "secret-recipes")
    listed = await run(clawden, stack, "groups", "skills", "list", "main")
    assert re.search(r"secret-recipes\s+global\s+no", listed) and re.search(r"tide-tables\s+global\s+yes", listed)

    async with Terminal(stack, "busy") as busy, Terminal(stack, "batch") as batch:
        stack.fake.script(Hang())
        await busy.send("hold the only slot")
        await eventually(lambda: "hold the only slot" in said_to_the_model(stack), timeout=120)
        for n in range(15):
            await batch.send(f"note {n}")
        folder = await rows_stored(stack, "batch", 15)

        stack.fake.release()
        assert "hold the only slot" in (await busy.reply(timeout=60)).text
        await batch.reply(timeout=120)
        await stack.wait_until_idle(folder.name, timeout=120)

        [container] = [c for c in stack.containers() if c.labels["dev.clawden.session"] == folder.name]
        logs = container.logs().decode()
        prompts = [len(m.split(", ")) for m in re.findall(r"sent #\[([\d, ]+)\] as prompt", logs)]
        assert prompts == [5, 5, 5]

    turns = [r.body for r in stack.fake.messages_requests(with_tools=True) if not is_compaction(r.body)]
    assert turns and {t["output_config"]["effort"] for t in turns} == {"max"}
    everything = json.dumps(turns)
    assert "You are Pip, a personal assistant" in everything
    assert "PINEAPPLE-7" in everything  # the global memory, loaded
    assert "QUOKKA-TIDE" in everything  # the enabled skill's description
    assert "WOMBAT-SECRET" not in everything  # the disabled one is not in the container at all


async def test_cost_from_an_admin_is_answered_by_the_runner_and_never_reaches_the_model(stack: Stack) -> None:
    async with Terminal(stack, "costly") as term:  # the terminal's user is the machine's owner
        first = await term.ask("what does this cost?", timeout=120)
        await stack.wait_until_idle(first.session_id)
        calls = len(stack.fake.messages_requests())

        reply = await term.ask("/cost", timeout=60)

        assert reply.text.startswith("This chat has cost $") and reply.session_id == first.session_id
        assert len(stack.fake.messages_requests()) == calls
        assert "/cost" not in said_to_the_model(stack)
