"""The dashboard's handlers for vault, agents, tasks and logs: the same verbs as `clawden secrets|rules|audit|
egress|groups|members|sessions|dropped|tasks|logs`, through the typed control client, with the same messages.
Each one first asks the router who the signed-in person is (scope.Scope) and shows or changes only what they
administer; each change is an audit event naming them (Backend.changed)."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from clawden import logtail
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import scheduler as scheduler_ctl
from clawden.bus.ctl import vault as vault_ctl
from clawden.grants import default_grants
from services.web import panels
from services.web.backend import TASK_VERBS, BackendError
from services.web.scope import EVERY_GROUP, Scope

if TYPE_CHECKING:
    from services.web.app import Form, Web

AUDIT_LIMIT = 100


def back(path: str, *, note: str = "", error: str = "") -> RedirectResponse:
    """After a POST: to the page, with what happened (or the service's own refusal) shown on it."""
    query = urllib.parse.urlencode({k: v[:300] for k, v in (("note", note), ("error", error)) if v})
    return RedirectResponse(f"{path}?{query}" if query else path, 303)


def shown_notes(request: Request) -> tuple[str, str]:
    return request.query_params.get("note", "")[:300], request.query_params.get("error", "")[:300]


def known_groups(asked: list[str], known: list[str]) -> str:
    """As `clawden secrets|rules|egress` refuse a group the router does not know (a typo protects nobody)."""
    unknown = sorted({a for a in asked if a and a != EVERY_GROUP} - set(known))
    if not unknown:
        return ""
    return f"no agent group {', '.join(unknown)}; the groups are: {', '.join(sorted(known))} (or '*' for all)"


def number(text: str, what: str) -> float | None:
    """A form's number, or None when empty. Its range is for the service to judge, so a value out of it gets the
    same words as from the CLI."""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise BackendError(f"{what}: {text!r} is not a number") from None


def whole(text: str, what: str, low: int = 1, high: int = 100_000) -> int | None:
    """A form's whole number, or None when empty, refused in the words `clawden` uses for its option (`--limit`)."""
    if not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        raise BackendError(f"{what}: {text!r} is not a whole number") from None
    if not low <= value <= high:
        raise BackendError(f"{what}: {text} is out of range: give {low} to {high}")
    return value


def seen(scope: Scope, name: str, found: vault_ctl.SecretInfo | None) -> vault_ctl.SecretInfo:
    """A secret this person may see; one they may not is answered as if there were none."""
    if found is None or not scope.sees_any(found.grants):
        raise BackendError(f"no secret named {name}")
    return found


class Dashboard:
    def __init__(self, web: Web) -> None:
        self.web = web
        self.backend = web.backend

    async def _scope(self, request: Request) -> tuple[Scope, str]:
        found = await self.web.signed_in(request)
        scope = await self.backend.scope(found.user_id)
        scope.need_admin("the dashboard")
        return scope, found.csrf

    async def _posted(self, request: Request) -> tuple[Scope, Form]:
        found, form = await self.web.posted(request)
        scope = await self.backend.scope(found.user_id)
        scope.need_admin("the dashboard")
        return scope, form

    async def _groups(self, scope: Scope) -> list[str]:
        return [g.name for g in await self.backend.group_list() if scope.sees(g.name)]

    # --- vault ----------------------------------------------------------------------------------------

    async def vault(self, request: Request) -> Response:
        scope, csrf = await self._scope(request)
        secrets, rules, groups = await asyncio.gather(self.backend.secrets(), self.backend.rules(), self._groups(scope))
        modes = list(await asyncio.gather(*(self.backend.egress(g) for g in groups)))
        page = panels.vault(
            [s for s in secrets if scope.sees_any(s.grants)],
            [r for r in rules if scope.sees_any([r.agent_group])],
            modes,
            groups,
            scope,
            csrf,
            *shown_notes(request),
        )
        return self.web.page(page)

    async def secret_add(self, request: Request) -> Response:
        scope, form = await self._posted(request)
        agents = form.all("agents")
        replacing = form.get("replace") == "1"  # naming no groups, it keeps the grants it has (checked below)
        if not scope.everything and not agents and not replacing:
            agents = sorted(scope.groups)  # an admin's secret is for their own groups, never for every group
        if agents or not replacing:
            scope.need_all(agents or [EVERY_GROUP], "a secret for every agent group")
        groups = [g.name for g in await self.backend.group_list()]
        if refused := known_groups(agents, groups):
            return back("/vault", error=refused)
        if not form.get("value", "").strip():
            return back("/vault", error="no value given (type it in the Value field)")
        try:
            replace = replacing and await self._replaceable(scope, form.get("name", ""))
        except BackendError as exc:
            return back("/vault", error=str(exc))
        if not agents and not replace:  # a replacement naming none keeps its grants (the vault's rule)
            agents = default_grants(form.get("type", ""), groups) or []
            if not agents:
                return back(
                    "/vault",
                    error=f"tick the agent groups that may use it (there are {', '.join(groups) or 'none yet'}),"
                    " or every agent group (*) for all of them, now and later",
                )
        secret = vault_ctl.AddSecret(
            name=form.get("name", ""),
            type=form.get("type", ""),
            value=form.get("value", "").strip(),
            host=form.get("host", ""),
            path=form.get("path", "") or "*",
            header=form.get("header", ""),
            format=form.get("format", "") or "{value}",
            param=form.get("param", ""),
            agents=agents,
            replace=replace,
        )
        try:
            added = await self.backend.secret_add(secret)
        except BackendError as exc:
            return back("/vault", error=str(exc))
        info = added.secret
        verb = "stored" if added.created else "replaced"
        summary = f"{verb} secret {info.name} for {info.where()} (granted to {', '.join(info.grants)})"
        await self.backend.changed(scope.user, "secret_added", summary, secret=info.name)
        return back("/vault", note=summary)

    async def _named(self, name: str) -> vault_ctl.SecretInfo | None:
        return next((s for s in await self.backend.secrets() if s.name == name), None)

    async def _secret(self, scope: Scope, name: str) -> vault_ctl.SecretInfo:
        return seen(scope, name, await self._named(name))

    async def _replaceable(self, scope: Scope, name: str) -> bool:
        """Replacing a secret takes the rights removing it does: every group it is granted to now must be the
        caller's (`*` only for who administers every group), as its new grants must be. To an admin of some groups
        a name they cannot see is answered as remove and grant answer it, and so is a name not stored at all, so
        the answer never tells a hidden secret from no secret. Who sees everything may name one not stored yet
        (as `clawden secrets add --replace` may): sent as a plain add, which the vault refuses should it appear
        meanwhile."""
        found = await self._named(name)
        if found is None and scope.everything:
            return False
        scope.need_all(seen(scope, name, found).grants, f"secret {name}")
        return True

    async def secret_remove(self, request: Request) -> Response:
        scope, _ = await self._posted(request)
        name = request.path_params["name"]
        try:
            secret = await self._secret(scope, name)
            scope.need_all(secret.grants, f"secret {name}")
            await self.backend.secret_remove(name)
        except BackendError as exc:
            return back("/vault", error=str(exc))
        await self.backend.changed(scope.user, "secret_removed", f"removed secret {name}", secret=name)
        return back("/vault", note=f"removed {name}")

    async def secret_grant(self, request: Request) -> Response:
        scope, form = await self._posted(request)
        name, agents, revoke = form.get("name", ""), form.all("agents"), form.get("revoke") == "1"
        try:
            scope.need_all((await self._secret(scope, name)).grants, f"secret {name}")
            scope.need_all(agents, "that grant")
            if refused := known_groups(agents, [g.name for g in await self.backend.group_list()]):
                return back("/vault", error=refused)
            granted = await self.backend.secret_grant(vault_ctl.Grant(name=name, agents=agents, revoke=revoke))
        except BackendError as exc:
            return back("/vault", error=str(exc))
        summary = f"{name} is granted to: {', '.join(granted.secret.grants) or 'nobody'}"
        await self.backend.changed(scope.user, "secret_granted", summary, secret=name)
        return back("/vault", note=summary)

    async def rule_add(self, request: Request) -> Response:
        scope, form = await self._posted(request)
        agent = form.get("agent", "") or EVERY_GROUP
        scope.need_all([agent], "a rule for every agent group")
        if refused := known_groups([agent], [g.name for g in await self.backend.group_list()]):
            return back("/vault", error=refused)
        try:
            limit = whole(form.get("limit", ""), "limit") or 0
            rule = vault_ctl.AddRule(
                name=form.get("name", ""),
                action=form.get("action", ""),
                host=form.get("host", ""),
                path=form.get("path", "") or "*",
                method=form.get("method", "") or None,
                agent=agent,
                limit=limit,
                window=form.get("window", "") or None,
            )
            added = (await self.backend.rule_add(rule)).rule
        except BackendError as exc:
            return back("/vault", error=str(exc))
        summary = (
            f"added rule {added.name}: {added.action} {added.host_pattern}{added.path_pattern} for {added.agent_group}"
        )
        await self.backend.changed(scope.user, "rule_added", summary, rule=added.name)
        return back("/vault", note=summary)

    async def rule_remove(self, request: Request) -> Response:
        scope, _ = await self._posted(request)
        name = request.path_params["name"]
        try:
            found = next((r for r in await self.backend.rules() if r.name == name), None)
            if found is None or not scope.sees_any([found.agent_group]):
                raise BackendError(f"no rule named {name}")
            scope.need_all([found.agent_group], f"rule {name}")
            await self.backend.rule_remove(name)
        except BackendError as exc:
            return back("/vault", error=str(exc))
        await self.backend.changed(scope.user, "rule_removed", f"removed rule {name}", rule=name)
        return back("/vault", note=f"removed rule {name}")

    async def egress(self, request: Request) -> Response:
        scope, form = await self._posted(request)
        group = request.path_params["group"]
        scope.need(group)
        try:
            mode = await self.backend.egress(group, form.get("mode", ""))
        except BackendError as exc:
            return back("/vault", error=str(exc))
        summary = f"{mode.agent_group}: egress {mode.egress}"
        await self.backend.changed(scope.user, "egress_set", summary, agent_group=group, egress=mode.egress)
        return back("/vault", note=summary)

    async def audit(self, request: Request) -> Response:
        scope, _ = await self._scope(request)
        groups = await self._groups(scope)
        query = request.query_params
        agent, since = query.get("agent", ""), query.get("since", "")
        since = since if since in panels.AUDIT_SINCE else ""
        try:
            limit = max(1, min(1000, int(query.get("limit", "") or AUDIT_LIMIT)))
        except ValueError:
            limit = AUDIT_LIMIT
        if agent:
            scope.need(agent)
        asked = [agent] if agent else ([""] if scope.everything else groups)
        at = time.time() - float(since) if since else None
        found = await asyncio.gather(
            *(self.backend.audit(vault_ctl.AuditQuery(agent=a or None, since=at, limit=limit)) for a in asked)
        )
        records = sorted((r for rows in found for r in rows), key=lambda r: r.at, reverse=True)[:limit]
        return self.web.page(panels.audit(records, groups, scope, agent, since, limit))

    # --- agents ---------------------------------------------------------------------------------------

    async def _dropped(self, scope: Scope, group: str = "") -> list[router_ctl.Dropped]:
        """Dropped messages of the chats wired to our groups (or to `group`); the owner also sees unwired chats'."""
        dropped, chats = await asyncio.gather(self.backend.dropped(), self.backend.all_chats())
        if scope.everything and not group:
            return dropped
        wired = {(c.channel, c.chat_id) for c in chats if (group in c.wired if group else scope.sees_any(c.wired))}
        return [d for d in dropped if (d.channel, d.chat_id) in wired]

    async def agents(self, request: Request) -> Response:
        scope, csrf = await self._scope(request)
        groups, dropped = await asyncio.gather(self.backend.group_list(), self._dropped(scope))
        return self.web.page(panels.agents([g for g in groups if scope.sees(g.name)], dropped, scope, csrf))

    async def group(self, request: Request) -> Response:
        scope, csrf = await self._scope(request)
        name = request.path_params["group"]
        scope.need(name)
        detail, members, sessions, dropped = await asyncio.gather(
            self.backend.group(name),
            self.backend.members(name),
            self.backend.sessions(name),
            self._dropped(scope, name),
        )
        return self.web.page(panels.group(detail, members, sessions, dropped, scope, csrf, *shown_notes(request)))

    async def settings(self, request: Request) -> Response:
        scope, form = await self._posted(request)
        name = request.path_params["group"]
        scope.need(name)
        here = f"/agents/{name}"
        try:
            container = router_ctl.ContainerSettings(
                memory=form.get("memory", ""),
                cpus=number(form.get("cpus", ""), "cpus") or 0,
                idle_timeout=number(form.get("idle_timeout", ""), "idle timeout") or 0,
            )
            update = router_ctl.GroupUpdate(
                name=name,
                assistant_name=form.get("assistant_name", ""),
                model=form.get("model", ""),
                container=container,
            )
            await self.backend.group_update(update)
        except BackendError as exc:
            return back(here, error=str(exc))
        await self.backend.changed(scope.user, "group_updated", f"updated the settings of {name}", agent_group=name)
        return back(here, note=f"saved the settings of {name}")

    async def member_add(self, request: Request) -> Response:
        scope, form = await self._posted(request)
        name = request.path_params["group"]
        scope.need(name)
        user = form.get("user", "").strip()
        try:
            added = await self.backend.member_add(name, user, scope.user)
        except BackendError as exc:
            return back(f"/agents/{name}", error=str(exc))
        summary = f"{user} is a member of {name}" + ("" if added.changed else " (already was)")
        await self.backend.changed(scope.user, "member_added", summary, agent_group=name, member=user)
        return back(f"/agents/{name}", note=summary)

    async def member_remove(self, request: Request) -> Response:
        scope, _ = await self._posted(request)
        name = request.path_params["group"]
        scope.need(name)
        user = request.query_params.get("user", "")
        try:
            removed = await self.backend.member_remove(name, user)
        except BackendError as exc:
            return back(f"/agents/{name}", error=str(exc))
        summary = f"{user} is no member of {name}" + ("" if removed.removed else " (was not)")
        await self.backend.changed(scope.user, "member_removed", summary, agent_group=name, member=user)
        return back(f"/agents/{name}", note=summary)

    # --- tasks ----------------------------------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        scope, csrf = await self._scope(request)
        rows = [t for t in await self.backend.tasks() if scope.sees(t.agent_group)]
        return self.web.page(panels.tasks(rows, scope, csrf, *shown_notes(request)))

    async def _task(self, scope: Scope, task_id: str) -> scheduler_ctl.TaskInfo:
        found = await self.backend.task(task_id)
        scope.need(found.agent_group)
        return found

    async def task(self, request: Request) -> Response:
        scope, csrf = await self._scope(request)
        found = await self._task(scope, request.path_params["task_id"])
        return self.web.page(panels.task(found, await self.backend.runs(found.id), scope, csrf))

    async def task_set(self, request: Request) -> Response:
        scope, _ = await self._posted(request)
        task_id, verb = request.path_params["task_id"], request.path_params["verb"]
        if verb not in TASK_VERBS:
            return back("/tasks", error=f"no such task action {verb!r}: pause, resume or cancel")
        try:
            await self._task(scope, task_id)
            done = await self.backend.task_set(verb, task_id)
        except BackendError as exc:
            return back("/tasks", error=str(exc))
        summary = f"task {done.id} is {done.status}"
        await self.backend.changed(scope.user, f"task_{verb}", summary, task_id=done.id, agent_group=done.agent_group)
        return back("/tasks", note=summary)

    # --- logs -----------------------------------------------------------------------------------------

    async def logs(self, request: Request) -> Response:
        scope, csrf = await self._scope(request)
        scope.need_everything("the logs (they hold every agent group's)")
        names, error = await self._log_names()
        return self.web.page(panels.logs(names, scope, csrf, error))

    async def _log_names(self) -> tuple[list[str], str]:
        """The services whose logs can be followed: the journal's units under systemd, else the files."""
        if self.web.journal is not None:
            return await logtail.journal_units(self.web.journal)
        return sorted(logtail.services(self.web.logs)), ""

    async def _known_log(self, request: Request) -> str:
        service: str = request.path_params["service"]
        names, error = await self._log_names()
        if service not in names:
            where = "the journal" if self.web.journal else str(self.web.logs)
            raise BackendError(f"no log for {service} in {where}" + (f" ({error})" if error else ""))
        return service

    async def log(self, request: Request) -> Response:
        scope, csrf = await self._scope(request)
        scope.need_everything("the logs (they hold every agent group's)")
        return self.web.page(panels.log(await self._known_log(request), scope, csrf))

    async def log_events(self, request: Request) -> Response:
        """The tail over SSE: the last lines, then each one appended, until the page goes away."""
        scope, _ = await self._scope(request)
        scope.need_everything("the logs (they hold every agent group's)")
        service = await self._known_log(request)
        if self.web.journal is not None:
            batches = logtail.follow_journal(self.web.journal, service, self.web.stopping)
        else:
            batches = logtail.follow(logtail.services(self.web.logs)[service], self.web.stopping)

        async def stream() -> AsyncIterator[str]:
            async for lines in batches:
                yield "".join(f"data: {line}\n\n" for line in lines) if lines else ": keepalive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=self.web.stream_headers())
