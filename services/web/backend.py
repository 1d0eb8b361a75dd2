"""Every question the web service asks another service, in one place: typed control requests
(`clawden.control.ask_on`, the verbs of `clawden.bus.ctl`) over the web service's own NATS connection, whose
identity may call only these verbs (natsauth.WEB_CALLS), and the report `clawden status` prints. Never
another service's database."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client

from clawden import control, survey
from clawden.bus.ctl import Verb
from clawden.bus.ctl import approvals as approvals_ctl
from clawden.bus.ctl import router as router_ctl
from clawden.config import Config

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


class BackendError(Exception):
    """A service refused or did not answer; the message is for the person on the page."""


class Backend:
    def __init__(self, nc: Client, cfg: Config) -> None:
        self.nc = nc
        self.cfg = cfg

    async def _ask(self, verb: Verb[Req, Rep], request: Req) -> Rep:
        try:
            return await control.ask_on(self.nc, verb, request)
        except control.ControlError as exc:
            raise BackendError(str(exc)) from None

    async def chats(self, channel: str) -> list[router_ctl.Chat]:
        return await self._ask(router_ctl.CHATS_LIST, router_ctl.ChatList(channel=channel))

    async def groups(self) -> list[str]:
        return [g.name for g in await self._ask(router_ctl.GROUPS_LIST, router_ctl.ListAll())]

    async def new_chat(self, channel: str, name: str, group: str) -> str:
        """A new web chat wired to `group`; only signed-in people can write in it, so it is open to them all."""
        chat_id = secrets.token_hex(6)
        chat = router_ctl.ChatCreate(channel=channel, chat_id=chat_id, name=name, policy="public")
        await self._ask(router_ctl.CHATS_CREATE, chat)
        wiring = router_ctl.WiringCreate(channel=channel, chat_id=chat_id, agent_group=group)
        await self._ask(router_ctl.WIRINGS_CREATE, wiring)
        return chat_id

    async def pending_approvals(self) -> list[approvals_ctl.ApprovalDetail]:
        """Each pending approval whole (what is asked, its buttons), as `clawden approvals show` has it."""
        rows = await self._ask(approvals_ctl.LIST, approvals_ctl.ListRequest(status="pending", limit=200))
        shows = (self._ask(approvals_ctl.SHOW, approvals_ctl.ShowRequest(id=r.id)) for r in rows)
        return list(await asyncio.gather(*shows))

    async def decide(self, approval_id: str, choice: str, by: str) -> approvals_ctl.ApprovalDetail:
        """As `clawden approvals approve|deny`, with the signed-in person as the one who decided (audited)."""
        request = approvals_ctl.DecideRequest(id=approval_id, choice=choice, by=by)
        return await self._ask(approvals_ctl.DECIDE, request)

    async def status(self) -> dict[str, Any]:
        return await survey.report(self.nc, self.cfg)
