"""Every question the web service asks another service, in one place: typed control requests
(`clawden.control.ask_on`, the verbs of `clawden.bus.ctl`) over the web service's own NATS connection, whose
identity may call only these verbs (natsauth.WEB_CALLS), and the report `clawden status` prints. Never
another service's database."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client

from clawden import control, survey
from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.ctl import Nothing, Verb
from clawden.bus.ctl import approvals as approvals_ctl
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import scheduler as scheduler_ctl
from clawden.bus.ctl import vault as vault_ctl
from clawden.config import Config
from services.web import scope

log = logging.getLogger("clawden.web")

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

    async def approval(self, approval_id: str) -> approvals_ctl.ApprovalDetail:
        return await self._ask(approvals_ctl.SHOW, approvals_ctl.ShowRequest(id=approval_id))

    async def decide(self, approval_id: str, choice: str, by: str) -> approvals_ctl.ApprovalDetail:
        """As `clawden approvals approve|deny`, with the signed-in person as the one who decided (audited)."""
        request = approvals_ctl.DecideRequest(id=approval_id, choice=choice, by=by)
        return await self._ask(approvals_ctl.DECIDE, request)

    async def status(self) -> dict[str, Any]:
        return await survey.report(self.nc, self.cfg)

    # --- who may do what ------------------------------------------------------------------------------

    async def scope(self, user: str) -> scope.Scope:
        """Asked for every page and every POST, so a role granted or revoked counts at once."""
        return scope.of(await self.standing(user))

    async def standing(self, user: str = "") -> router_ctl.Standing:
        """The router's read-only answer on one person (and the install's first owner). Never `roles`: that
        subject also grants and revokes, and this identity may not call it."""
        return await self._ask(router_ctl.STANDING, router_ctl.StandingGet(user_id=user))

    async def changed(self, user: str, kind: str, summary: str, **fields: str) -> None:
        """Every change made from the web: an audit event naming the signed-in person, and a log line."""
        event = ev.AuditEvent(
            service="web", kind=kind, at=time.time(), summary=summary, fields={"user": user, **fields}
        )
        await self.nc.publish(subjects.event("web", kind), ev.encode(event))
        log.info("%s: %s", user, summary, extra={"user": user})

    # --- agents ---------------------------------------------------------------------------------------

    async def group_list(self) -> list[router_ctl.GroupListed]:
        return await self._ask(router_ctl.GROUPS_LIST, router_ctl.ListAll())

    async def group(self, name: str) -> router_ctl.GroupDetail:
        return await self._ask(router_ctl.GROUPS_GET, router_ctl.GroupGet(name=name))

    async def group_update(self, update: router_ctl.GroupUpdate) -> router_ctl.Group:
        return await self._ask(router_ctl.GROUPS_UPDATE, update)

    async def sessions(self, group: str) -> list[router_ctl.Session]:
        return await self._ask(router_ctl.SESSIONS_LIST, router_ctl.GroupFilter(agent_group=group))

    async def members(self, group: str) -> list[router_ctl.Member]:
        return await self._ask(router_ctl.MEMBERS_LIST, router_ctl.GroupFilter(agent_group=group))

    async def member_add(self, group: str, user: str, by: str) -> router_ctl.MemberAdded:
        return await self._ask(
            router_ctl.MEMBERS_ADD, router_ctl.MemberAdd(agent_group=group, user_id=user, added_by=by)
        )

    async def member_remove(self, group: str, user: str) -> router_ctl.MemberRemoved:
        return await self._ask(router_ctl.MEMBERS_REMOVE, router_ctl.MemberRemove(agent_group=group, user_id=user))

    async def dropped(self) -> list[router_ctl.Dropped]:
        return await self._ask(router_ctl.DROPPED_LIST, router_ctl.DroppedList(limit=200))

    async def all_chats(self) -> list[router_ctl.Chat]:
        return await self._ask(router_ctl.CHATS_LIST, router_ctl.ChatList())

    # --- vault ----------------------------------------------------------------------------------------

    async def secrets(self) -> list[vault_ctl.SecretInfo]:
        return (await self._ask(vault_ctl.SECRETS_LIST, Nothing())).secrets

    async def secret_add(self, secret: vault_ctl.AddSecret) -> vault_ctl.SecretAdded:
        return await self._ask(vault_ctl.SECRETS_ADD, secret)

    async def secret_remove(self, name: str) -> vault_ctl.Removed:
        return await self._ask(vault_ctl.SECRETS_REMOVE, vault_ctl.Named(name=name))

    async def secret_grant(self, grant: vault_ctl.Grant) -> vault_ctl.SecretGranted:
        return await self._ask(vault_ctl.SECRETS_GRANT, grant)

    async def rules(self) -> list[vault_ctl.RuleInfo]:
        return (await self._ask(vault_ctl.RULES_LIST, Nothing())).rules

    async def rule_add(self, rule: vault_ctl.AddRule) -> vault_ctl.RuleAdded:
        return await self._ask(vault_ctl.RULES_ADD, rule)

    async def rule_remove(self, name: str) -> vault_ctl.Removed:
        return await self._ask(vault_ctl.RULES_REMOVE, vault_ctl.Named(name=name))

    async def audit(self, query: vault_ctl.AuditQuery) -> list[vault_ctl.AuditRecord]:
        return (await self._ask(vault_ctl.AUDIT, query)).records

    async def egress(self, group: str, mode: str | None = None) -> vault_ctl.EgressMode:
        return await self._ask(vault_ctl.EGRESS, vault_ctl.EgressRequest(agent_group=group, mode=mode))

    # --- tasks ----------------------------------------------------------------------------------------

    async def tasks(self) -> list[scheduler_ctl.TaskInfo]:
        return await self._ask(scheduler_ctl.TASKS, scheduler_ctl.ListRequest())

    async def task(self, task_id: str) -> scheduler_ctl.TaskInfo:
        return await self._ask(scheduler_ctl.GET, scheduler_ctl.TaskRef(task_id=task_id))

    async def runs(self, task_id: str) -> list[scheduler_ctl.Run]:
        return await self._ask(scheduler_ctl.RUNS, scheduler_ctl.RunsRequest(task_id=task_id, limit=50))

    async def task_set(self, verb: str, task_id: str) -> scheduler_ctl.TaskInfo:
        """pause, resume or cancel, as `clawden tasks pause|resume|cancel`."""
        return await self._ask(TASK_VERBS[verb], scheduler_ctl.TaskRef(task_id=task_id))


TASK_VERBS = {"pause": scheduler_ctl.PAUSE, "resume": scheduler_ctl.RESUME, "cancel": scheduler_ctl.CANCEL}
