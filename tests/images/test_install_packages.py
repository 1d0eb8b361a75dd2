"""`install_packages` end to end, with real containers and the fake model: the agent asks for Debian's jq, an admin
decides on the card, and on approval the runner builds the group's image with no network (jq and its library
from this host's apt cache or its installed copy), restarts the session's container on it, and the same
conversation goes on there, where jq runs. Denied, nothing changes. One image build in all."""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import control, groupimage, sessiondb
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_api
from clawden.dockercli import docker, image_labels
from clawden.packagespec import Packages, image_tag
from tests.admin.test_agent_cli import reply_with
from tests.e2e.harness import Stack, Terminal
from tests.e2e.test_credential_approval import button, card_for, click
from tests.e2e.test_tools import run_tool
from tests.eventually import eventually
from tests.fakes.anthropic import Hang, Text, ToolCall

pytestmark = pytest.mark.docker
OWNER = f"local:{getpass.getuser()}"
JQ = {"apt": ["jq"], "reason": "to read the JSON reports"}
JQ_RUN = {"command": "echo '{\"a\": [1, 2, 3]}' | jq -c '.a | length'", "description": "count with jq"}


@pytest.fixture
async def term(stack: Stack) -> AsyncIterator[Terminal]:
    async with Terminal(stack, "terminal") as t:  # also the owner's direct chat, where the cards go
        await stack.wait_until_idle((await t.ask("hello", timeout=90)).session_id)
        yield t


async def group_image(stack: Stack) -> str:
    group = await control.ask(config_mod.load(stack.home), router_api.GROUPS_GET, router_api.GroupGet(name="main"))
    return group.container.image or ""


def main_container(stack: Stack) -> tuple[str, str]:
    """The id and image of main's one running container."""
    [box] = [c for c in stack.containers() if c.labels.get("dev.clawden.agent-group") == "main"]
    return box.id, str(box.attrs["Config"]["Image"])


def jq_tag(stack: Stack) -> str:
    """The tag the approved request builds, removed first so that this run builds it (one build in CI)."""
    base = config_mod.load(stack.home).runner.image
    tag = image_tag("main", groupimage.base_id(base), Packages(apt=("jq",)))
    docker(["docker", "image", "rm", "--force", tag])
    return tag


async def ask_for_jq(stack: Stack, term: Terminal) -> ev.OutboundMessage:
    """The agent calls install_packages; the card the owner gets."""
    asked = await run_tool(stack, term, "install_packages", JQ)
    assert "approval pending" in asked, asked
    card = await card_for(term)
    assert card.card is not None and card.card.title == "Agent main asks to install packages"
    assert "main's image would be rebuilt with apt jq" in card.card.body
    assert "to read the JSON reports" in card.card.body
    return card


def conversation(folder: Path) -> str | None:
    return sessiondb.get_state(folder, sessiondb.CONVERSATION_KEY)


async def test_a_denied_install_changes_nothing_and_the_agent_is_told(stack: Stack, term: Terminal) -> None:
    tag = jq_tag(stack)
    before = main_container(stack)
    card = await ask_for_jq(stack, term)

    await click(term, card, button(card, approve=False), OWNER)

    told = await reply_with(term, "was denied")
    assert f"denied by {OWNER}" in told.text and "nothing was changed" in told.text
    assert await group_image(stack) == ""
    assert main_container(stack) == before  # not restarted
    assert image_labels(tag) is None  # nothing built
    await stack.wait_until_idle(told.session_id)  # the turn that was told ends before the next is scripted
    jq = await run_tool(stack, term, "Bash", JQ_RUN)
    assert "jq: not found" in jq or "command not found" in jq


async def test_an_approved_install_that_cannot_be_built_changes_nothing_and_says_why(
    stack: Stack, term: Terminal
) -> None:
    before = main_container(stack)
    asked = await run_tool(stack, term, "install_packages", {"apt": ["no-such-package-zz"], "reason": "a typo"})
    assert "approval pending" in asked, asked
    card = await card_for(term)

    await click(term, card, button(card, approve=True), OWNER)

    told = await reply_with(term, "could not be built")
    assert f"Installing apt no-such-package-zz was approved by {OWNER}, but the image could not be built" in told.text
    assert "this host's apt knows no Debian package no-such-package-zz" in told.text
    assert "Nothing changed; your container keeps its image." in told.text
    assert await group_image(stack) == ""
    assert main_container(stack) == before
    await stack.wait_until_idle(told.session_id)


async def test_an_approved_install_rebuilds_restarts_and_the_conversation_goes_on_with_jq(
    stack: Stack, term: Terminal
) -> None:
    tag = jq_tag(stack)
    session_id = (await term.ask("which session?")).session_id
    await stack.wait_until_idle(session_id)
    folder = stack.home / "sessions" / "main" / session_id
    claude_session = conversation(folder)
    old_container, old_image = main_container(stack)
    card = await ask_for_jq(stack, term)

    await click(term, card, button(card, approve=True), OWNER)

    told = await reply_with(term, "was approved by", timeout=300)
    assert f"Installing apt jq was approved by {OWNER} and done: your container now runs {tag}" in told.text
    assert await group_image(stack) == tag
    labels = image_labels(tag)
    assert labels is not None and json.loads(labels["dev.clawden.packages"])["apt"] == ["jq"]
    # The agent sources' hash comes with the base, so `clawden doctor` sees when a group image is on an old base.
    base_labels = image_labels(config_mod.load(stack.home).runner.image) or {}
    assert labels["dev.clawden.source-hash"] == base_labels["dev.clawden.source-hash"]
    await eventually(lambda: main_container(stack)[0] != old_container, timeout=60)
    assert main_container(stack)[1] == tag and old_image != tag

    await stack.wait_until_idle(told.session_id)
    jq = await run_tool(stack, term, "Bash", JQ_RUN)
    assert jq.strip().splitlines()[0] == "3", jq
    assert claude_session and conversation(folder) == claude_session  # the same Claude Code conversation, resumed
    last = stack.fake.messages_requests(with_tools=True)[-1].body["messages"]
    assert "install_packages" in json.dumps(last)  # what came before the restart is in the model's context


def clawden(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "clawden", *args]
    return subprocess.run(cmd, env=stack.env(), capture_output=True, text=True, timeout=120)


async def test_the_owners_cli_lists_keeps_refuses_restarts_and_removes(stack: Stack, term: Terminal) -> None:
    """After the approved install: no second build for the same packages, a bad name refused with the group's image
    kept, a restart that stops the container (the next message starts one on the group's image), and remove."""
    tag = await group_image(stack)
    assert tag.startswith("clawden-agent:main-")

    listed = await asyncio.to_thread(clawden, stack, "groups", "packages", "list", "main", "--json")
    assert json.loads(listed.stdout) == {"group": "main", "image": tag, "apt": ["jq"], "npm": [], "pip": []}
    again = await asyncio.to_thread(clawden, stack, "groups", "packages", "add", "main", "--apt", "jq", "--verbose")
    assert again.returncode == 0 and f"{tag} is current (same base, same packages): nothing to build" in again.stdout
    bad = await asyncio.to_thread(clawden, stack, "groups", "packages", "add", "main", "--apt", "no-such-package-zz")
    assert bad.returncode != 0
    assert "knows no Debian package no-such-package-zz" in bad.stderr and f"agent group main keeps {tag}" in bad.stderr
    assert await group_image(stack) == tag
    options = await asyncio.to_thread(clawden, stack, "groups", "packages", "add", "main", "--apt=jq;rm")
    assert options.returncode != 0 and "'jq;rm' is not a apt package name" in options.stderr

    before, _ = main_container(stack)
    restarted = await asyncio.to_thread(clawden, stack, "groups", "restart", "main")
    assert restarted.returncode == 0 and "1 container(s) stopped" in restarted.stdout, restarted
    await eventually(lambda: not [c for c in stack.containers() if c.id == before])
    await term.ask("are you back?", timeout=90)
    assert main_container(stack)[1] == tag

    removed = await asyncio.to_thread(clawden, stack, "groups", "packages", "remove", "main", "--apt", "jq")
    assert removed.returncode == 0 and "runs clawden-agent:latest (nothing)" in removed.stdout
    assert await group_image(stack) == ""


async def test_a_restart_mid_turn_runs_the_cut_turn_again_in_the_new_container(stack: Stack, term: Terminal) -> None:
    before, _ = main_container(stack)
    seen = len(stack.fake.messages_requests())
    stack.fake.script(Hang(), ToolCall("send_message", {"text": "answered after the restart"}), Text("done"))
    try:
        await term.send("a question the restart cuts short")
        await eventually(lambda: len(stack.fake.messages_requests()) > seen)  # the turn is in the model's hands

        restarted = await asyncio.to_thread(clawden, stack, "groups", "restart", "main")

        assert "1 container(s) stopped" in restarted.stdout, restarted
        assert (await reply_with(term, "answered after the restart")).text == "answered after the restart"
        assert main_container(stack)[0] != before
    finally:
        stack.fake.release()  # the held request's connection is gone with its container
