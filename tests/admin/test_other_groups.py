"""A `global` agent's `clawden` write about another agent group (services/runner/admin.py, images.py), against the
real router on real NATS: its card is for that group's approvers and says which agent asked, and once approved it
changes that group, never the asking agent's own."""

from __future__ import annotations

import asyncio

import pytest

from clawden.bus.ctl import router as api
from tests.admin.conftest import INFO, Desk, approved
from tests.router.conftest import RouterProcess


@pytest.fixture
async def ops(router: RouterProcess) -> str:
    """Main's agent may see and ask about every group; ops is another group."""
    await router.ask(api.GROUPS_CREATE, api.GroupCreate(name="ops"))
    global_ = api.ContainerSettings(cli_scope="global")
    await router.ask(api.GROUPS_UPDATE, api.GroupUpdate(name=INFO.agent_group, container=global_))
    return "ops"


async def test_a_write_about_another_group_is_for_that_groups_approvers_and_names_the_asker(
    desk: Desk, ops: str
) -> None:
    reply = await desk.ask("members", "add", ops, "telegram:999")

    [request] = await desk.requests()
    assert request.id == reply.pending
    assert request.agent_group == ops  # its admins decide (then global admins and owners), not main's
    assert request.card.title == "Agent main asks to run a command for agent group ops"
    assert "telegram:999 would become a member of agent group ops." in request.card.body


async def test_an_approved_mcp_server_for_another_group_is_that_groups_and_restarts_nobody(
    router: RouterProcess, desk: Desk, ops: str
) -> None:
    reply = await desk.ask("groups", "mcp", "add", ops, "notes", "--command", "/usr/bin/notes-mcp")

    assert await desk.admin.on_decision(approved(reply.pending))

    theirs = await router.ask(api.GROUPS_GET, api.GroupGet(name=ops))
    own = await router.ask(api.GROUPS_GET, api.GroupGet(name=INFO.agent_group))
    assert list(theirs.container.mcp or {}) == ["notes"]
    assert not own.container.mcp
    assert desk.restarted == []  # the asking session is main's: nothing of ops runs in it
    [told] = desk.notes.values()
    assert "agent group ops" in told and "next start" in told


@pytest.mark.docker  # the group's image is looked up with the docker CLI
async def test_approved_packages_for_another_group_are_built_for_that_group(
    router: RouterProcess, desk: Desk, ops: str
) -> None:
    # Both groups run an image of their own, which a build must never replace: the refusal names the group built for.
    for group in (INFO.agent_group, ops):
        own = api.ContainerSettings(image=f"example.invalid/{group}-own:1")
        await router.ask(api.GROUPS_UPDATE, api.GroupUpdate(name=group, container=own))
    reply = await desk.ask("groups", "packages", "add", ops, "--apt", "jq")

    assert await desk.admin.on_decision(approved(reply.pending))
    await asyncio.gather(*desk.installer.tasks)

    [told] = desk.notes.values()
    assert "agent group ops runs its own image example.invalid/ops-own:1" in told
    assert desk.restarted == []
