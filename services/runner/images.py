"""Packages an agent asked for (`install_packages`, or `clawden groups packages add` in its container), done by
the runner once an admin approved: the group's image is built again with them (clawden/groupimage.py, no
network in the build), made the group's image in the router and in the runner's own copy of its settings,
and the session's container restarted on it; its conversation goes on there (the Claude session id is in the
session folder). A failed build changes nothing. What happened is the agent's next message either way. An MCP
server an agent asked for (`add_mcp_server`) joins the group's servers the same way, with no build. Asked of another
group (a `global` agent may), it is that group's, whose containers take it at their next start; none restarts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client

from clawden import control, groupimage
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_api
from clawden.packagespec import Packages
from services.runner import scope
from services.runner.sessions import SessionIndex, SessionInfo

log = logging.getLogger("clawden.runner.images")
ASK_TIMEOUT = 10.0

Restart = Callable[[str], Awaitable[object]]  # a session id: stop its container, so its next message starts one
# (approval, session, text): the outcome to the agent, and the approved write is over (admin.AdminDesk.done)
Done = Callable[[ev.ApprovalDecision, SessionInfo, str], Awaitable[None]]


class Installer:
    """Builds a group's image with more packages and restarts the asking session on it (when it is of that group)."""

    def __init__(self, nc: Client, index: SessionIndex, runner_image: str, restart: Restart, done: Done) -> None:
        self.nc, self.index, self.runner_image, self.restart, self.done = nc, index, runner_image, restart, done
        self.lock = asyncio.Lock()  # one build at a time: the machine is small, and two of a group would race
        self.tasks: set[asyncio.Task[None]] = set()

    async def do(self, info: SessionInfo, command: scope.Command, decision: ev.ApprovalDecision) -> None:
        """An approved `groups packages add` (admin.py's Doer): built in the background, so the runner's other
        decisions do not wait for a build; the agent is told when it is done. A runner that stops before then
        builds it again when it starts (the write stays decided until `done`)."""
        task = asyncio.create_task(self._install_and_tell(info, command.group, scope.packages(command.args), decision))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _install_and_tell(
        self, info: SessionInfo, agent_group: str, wanted: Packages, decision: ev.ApprovalDecision
    ) -> None:
        by = decision.decided_by
        try:
            text = await self.install(info, agent_group, wanted, by)
        except Exception as exc:  # the router gone, Docker gone: the agent hears it instead of nothing
            log.exception("installing %s for %s failed", wanted.words(), info.id, extra={"session_id": info.id})
            text = f"Installing {wanted.words()} was approved by {by}, but failed on the host ({type(exc).__name__})."
        await self.done(decision, info, text)

    async def install(self, info: SessionInfo, agent_group: str, wanted: Packages, by: str) -> str:
        """Do it for `agent_group`; the words for the agent. Reading the group's image, building and setting the
        new one are one step under the lock: two approvals for a group, built one after the other, keep both's
        packages."""
        async with self.lock:
            group = await control.ask_on(
                self.nc, router_api.GROUPS_GET, router_api.GroupGet(name=agent_group), timeout=ASK_TIMEOUT
            )
            setting = group.container.image or ""
            try:
                tag, packages, _built = await asyncio.to_thread(
                    groupimage.rebuild, group.name, setting, self.runner_image, lambda have: have.plus(wanted), log=_log
                )
            except groupimage.BuildError as exc:
                log.warning("image of %s not built: %s", group.name, exc, extra={"session_id": info.id})
                return (
                    f"Installing {wanted.words()} was approved by {by}, but the image could not be built: {exc}."
                    " Nothing changed; your container keeps its image."
                )
            await self.use(group.name, "" if tag == self.runner_image else tag, setting)
        if group.name != info.agent_group:
            return (
                f"Installing {wanted.words()} for agent group {group.name} was approved by {by} and done: its"
                f" containers run {tag} ({packages.words()}) from their next start."
            )
        await self.restart(info.id)
        return (
            f"Installing {wanted.words()} was approved by {by} and done: your container now runs {tag}"
            f" ({packages.words()}). It was restarted on it; this conversation goes on, and you can use them now."
        )

    async def add_server(self, info: SessionInfo, command: scope.Command, decision: ev.ApprovalDecision) -> str:
        """An approved `groups mcp add` (add_mcp_server): the server joins the group the command names, in the
        router and the runner's copy, and the session's container restarts with it when it is of that group. One of
        that name already is not replaced. A router that does not answer raises (the write is tried again)."""
        by = decision.decided_by
        name, server = command.args["name"], scope.mcp_server(command.args)
        group = await control.ask_on(
            self.nc, router_api.GROUPS_GET, router_api.GroupGet(name=command.group), timeout=ASK_TIMEOUT
        )
        servers = dict(group.container.mcp or {})
        if name in servers and servers[name] != server:
            said = f"Adding the MCP server {name!r} was approved by {by}"
            return f"{said}, but the group already has one of that name; nothing changed."
        servers[name] = server
        update = router_api.GroupUpdate(name=group.name, container=router_api.ContainerSettings(mcp=servers))
        try:
            await control.ask_on(self.nc, router_api.GROUPS_UPDATE, update, timeout=ASK_TIMEOUT)
        except control.NoAnswer:
            raise
        except control.ControlError as exc:
            return f"Adding the MCP server {name!r} was approved by {by}, but the router refused it: {exc}"
        kept = self.index.group_settings(group.name) or ev.GroupSettings()
        await self.index.run(self.index.set_group_settings, group.name, msgspec.structs.replace(kept, mcp=servers))
        if group.name != info.agent_group:
            return (
                f"Adding the MCP server {name!r} to agent group {group.name} was approved by {by} and done: its"
                " containers have it from their next start."
            )
        await self.restart(info.id)
        return (
            f"Adding the MCP server {name!r} was approved by {by} and done: your container was restarted with it;"
            " this conversation goes on, and its tools are yours (search for them by name)."
        )

    async def use(self, agent_group: str, image: str, setting: str) -> None:
        """Make `image` the group's, in the router (for every later wake) and in the runner's copy now."""
        if image != setting:
            update = router_api.GroupUpdate(name=agent_group, container=router_api.ContainerSettings(image=image))
            await control.ask_on(self.nc, router_api.GROUPS_UPDATE, update, timeout=ASK_TIMEOUT)
        kept = self.index.group_settings(agent_group) or ev.GroupSettings()
        # The same changed_at: the router's next snapshot, which says the same and more, replaces this one.
        await self.index.run(self.index.set_group_settings, agent_group, msgspec.structs.replace(kept, image=image))


def _log(line: str) -> None:
    log.info("%s", line)
