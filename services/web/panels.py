"""The dashboard's pages beside status and approvals: vault, agents, tasks and logs, rendered on the server
(every value escaped by pages.e). A secret's value is never part of any page: only its name, where it goes,
and who may use it."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlencode

from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import scheduler as scheduler_ctl
from clawden.bus.ctl import vault as vault_ctl
from services.web.pages import _table, e, layout, scroller, when
from services.web.scope import EVERY_GROUP, Scope

AUDIT_SINCE = {"": "any time", "3600": "the last hour", "86400": "the last day", "604800": "the last week"}


def notes(note: str, error: str) -> str:
    shown = f'<p role="status" class="note">{e(note)}</p>' if note else ""
    return shown + (f'<p role="alert" class="error">{e(error)}</p>' if error else "")


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">'


def button_form(action: str, csrf: str, label: str, name: str = "") -> str:
    """One button that posts: a labelled control of its own, reachable by Tab."""
    aria = f' aria-label="{e(label)} {e(name)}"' if name else ""
    return (
        f'<form method="post" action="{e(action)}" class="inline">{csrf_field(csrf)}'
        f'<button type="submit"{aria}>{e(label)}</button></form>'
    )


def field(name: str, label: str, *, kind: str = "text", value: str = "", extra: str = "", ident: str = "") -> str:
    """A labelled input; `ident` (default: the name) keeps ids unique where two forms share a field name."""
    ident = ident or name
    return (
        f'<label for="{e(ident)}">{e(label)}</label> '
        f'<input id="{e(ident)}" name="{e(name)}" type="{e(kind)}" value="{e(value)}"{extra}> '
    )


def select(name: str, label: str, options: Iterable[tuple[str, str]], chosen: str = "", *, ident: str = "") -> str:
    ident = ident or name
    items = "".join(
        f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(text)}</option>' for v, text in options
    )
    return f'<label for="{e(ident)}">{e(label)}</label> <select id="{e(ident)}" name="{e(name)}">{items}</select> '


def check(name: str, label: str, ident: str) -> str:
    return (
        f'<label class="check"><input type="checkbox" id="{e(ident)}" name="{e(name)}" value="1"> {e(label)}</label> '
    )


def group_choices(groups: Iterable[str], scope: Scope) -> list[tuple[str, str]]:
    """The agent groups one may name in a form: one's own, and `*` (every group) for who administers them all."""
    every = [(EVERY_GROUP, "every agent group (*)")] if scope.everything else []
    return every + [(g, g) for g in groups]


# --- vault -----------------------------------------------------------------------------------------------


def injected_as(s: vault_ctl.SecretInfo) -> str:
    if s.kind == "anthropic":
        return "x-api-key (or Bearer for OAuth)"
    if s.kind == "openai":
        return "Authorization: Bearer"
    if s.param_name:
        return f"?{s.param_name}="
    return f"{s.header_name}: {s.value_format}"


def _secrets(rows: list[vault_ctl.SecretInfo], scope: Scope, csrf: str) -> str:
    if not rows:
        return "<p>No secrets stored.</p>"
    head = ("name", "type", "where", "injected as", "agent groups", "")
    body = "".join(
        "<tr>"
        f'<td id="s-{e(s.name)}">{e(s.name)}</td><td>{e(s.kind)}</td>'
        f"<td>{e(s.host_pattern + ('' if s.path_pattern == '*' else s.path_pattern))}</td>"
        f"<td>{e(injected_as(s))}</td><td>{e(', '.join(s.grants) or '(nobody)')}</td>"
        f"<td>{_remove(f'/vault/secrets/{s.name}/remove', s.name, csrf, scope.owns_all(s.grants))}</td>"
        "</tr>"
        for s in rows
    )
    return _head_table(head, body)


def _remove(action: str, name: str, csrf: str, allowed: bool) -> str:
    return button_form(action, csrf, "Remove", name) if allowed else ""


def _head_table(head: tuple[str, ...], body: str) -> str:
    cells = "".join(
        f'<th scope="col">{e(h)}</th>' if h else '<th scope="col"><span class="hidden">actions</span></th>'
        for h in head
    )
    return scroller(head, cells, body)


def _secret_form(groups: list[str], scope: Scope, csrf: str) -> str:
    types = [
        ("generic", "generic (a header or a query parameter)"),
        ("anthropic", "anthropic (the model key)"),
        ("openai", "openai"),
    ]
    agents = "".join(
        f'<label class="check"><input type="checkbox" name="agents" value="{e(v)}"> {e(text)}</label>'
        for v, text in group_choices(groups, scope)
    )
    return (
        '<form method="post" action="/vault/secrets" id="add-secret" autocomplete="off">'
        f"{csrf_field(csrf)}<fieldset><legend>Add a secret</legend>"
        + field("name", "Name", extra=' required maxlength="64"', ident="secret-name")
        + select("type", "Type", types, ident="secret-type")
        + field(
            "value",
            "Value (sent once, never shown)",
            kind="password",
            extra=' required autocomplete="new-password"',
            ident="secret-value",
        )
        + field("host", "Host pattern", extra=' placeholder="api.example.com"', ident="secret-host")
        + field("path", "Path pattern", value="*", ident="secret-path")
        + field("header", "Header", extra=' placeholder="Authorization"', ident="secret-header")
        + field("format", "Header value format", value="{value}", ident="secret-format")
        + field("param", "Query parameter (instead of a header)", ident="secret-param")
        + f'<fieldset class="agents"><legend>Agent groups that may use it ({e(_untick(scope))})</legend>'
        + f"{agents}</fieldset>"
        + check("replace", "Replace a secret of this name", "secret-replace")
        + '<button type="submit">Store the secret</button></fieldset></form>'
    )


def _untick(scope: Scope) -> str:
    """What no group ticked means (`clawden.grants`; an admin's secret is for their own groups)."""
    if scope.everything:
        return "none ticked: the only group, or every group for the model key; with several, tick them"
    return "none ticked: yours"


def _grant_form(rows: list[vault_ctl.SecretInfo], groups: list[str], scope: Scope, csrf: str) -> str:
    mine = [(s.name, s.name) for s in rows]
    if not mine:
        return ""
    return (
        '<form method="post" action="/vault/grants" id="grant">'
        f"{csrf_field(csrf)}<fieldset><legend>Grant or revoke a secret</legend>"
        + select("name", "Secret", mine, ident="grant-name")
        + select("agents", "Agent group", group_choices(groups, scope), ident="grant-agent")
        + check("revoke", "Revoke instead", "grant-revoke")
        + '<button type="submit">Apply</button></fieldset></form>'
    )


def _rules(rows: list[vault_ctl.RuleInfo], scope: Scope, csrf: str) -> str:
    if not rows:
        return "<p>No rules.</p>"
    head = ("name", "action", "method", "where", "agent group", "")
    body = "".join(
        "<tr>"
        f"<td>{e(r.name)}</td>"
        f"<td>{e(r.action + (f' {r.rate_limit}/{r.rate_window}' if r.action == 'rate_limit' else ''))}</td>"
        f"<td>{e(r.method or '*')}</td><td>{e(r.host_pattern + ('' if r.path_pattern == '*' else r.path_pattern))}</td>"
        f"<td>{e(r.agent_group)}</td>"
        f"<td>{_remove(f'/vault/rules/{r.name}/remove', r.name, csrf, scope.owns_all([r.agent_group]))}</td>"
        "</tr>"
        for r in rows
    )
    return _head_table(head, body)


def _rule_form(groups: list[str], scope: Scope, csrf: str) -> str:
    actions = [(a, a) for a in ("block", "manual_approval", "rate_limit", "allow")]
    windows = [("", "minute (default)"), ("hour", "hour"), ("day", "day")]
    return (
        '<form method="post" action="/vault/rules" id="add-rule">'
        f"{csrf_field(csrf)}<fieldset><legend>Add a rule (block &gt; manual_approval &gt; rate_limit)</legend>"
        + field("name", "Name", extra=' required maxlength="64"', ident="rule-name")
        + select("action", "Action", actions, ident="rule-action")
        + field("host", "Host pattern", extra=' required placeholder="api.stripe.com"', ident="rule-host")
        + field("path", "Path pattern", value="*", ident="rule-path")
        + field("method", "Method (empty: every one)", ident="rule-method")
        + select("agent", "Agent group", group_choices(groups, scope), ident="rule-agent")
        + field("limit", "Rate limit (requests per window)", kind="number", extra=' min="1"', ident="rule-limit")
        + select("window", "Window", windows, ident="rule-window")
        + '<button type="submit">Add the rule</button></fieldset></form>'
    )


def _egress(modes: list[vault_ctl.EgressMode], csrf: str) -> str:
    rows = "".join(
        f"<tr><td>{e(m.agent_group)}</td><td>"
        f'<form method="post" action="/vault/egress/{e(m.agent_group)}" class="inline">{csrf_field(csrf)}'
        + select(
            "mode",
            f"Egress of {m.agent_group}",
            [("open", "open"), ("allowlist", "allowlist")],
            m.egress,
            ident=f"egress-{m.agent_group}",
        )
        + f'<button type="submit" aria-label="Set egress of {e(m.agent_group)}">Set</button></form></td></tr>'
        for m in modes
    )
    return _head_table(("agent group", "egress"), rows)


def vault(
    secrets: list[vault_ctl.SecretInfo],
    rules: list[vault_ctl.RuleInfo],
    modes: list[vault_ctl.EgressMode],
    groups: list[str],
    scope: Scope,
    csrf: str,
    note: str = "",
    error: str = "",
) -> str:
    body = (
        notes(note, error)
        + '<p><a href="/vault/audit">The audit log of agents\' requests</a></p>'
        + f"<h2>Secrets</h2>{_secrets(secrets, scope, csrf)}{_secret_form(groups, scope, csrf)}"
        + _grant_form([s for s in secrets if scope.owns_all(s.grants)], groups, scope, csrf)
        + f"<h2>Rules</h2>{_rules(rules, scope, csrf)}{_rule_form(groups, scope, csrf)}"
        + f"<h2>Egress</h2>{_egress(modes, csrf)}"
    )
    return layout("Vault", body, user=scope.user, csrf=csrf)


def audit(
    records: list[vault_ctl.AuditRecord], groups: list[str], scope: Scope, agent: str, since: str, limit: int
) -> str:
    agents = ([("", "every agent group")] if scope.everything or len(groups) > 1 else []) + [(g, g) for g in groups]
    form = (
        '<form method="get" action="/vault/audit" id="audit-filter"><fieldset><legend>Filter</legend>'
        + select("agent", "Agent group", agents, agent)
        + select("since", "Since", AUDIT_SINCE.items(), since)
        + field("limit", "The newest", kind="number", value=str(limit), extra=' min="1" max="1000"')
        + '<button type="submit">Show</button></fieldset></form>'
    )
    rows = (
        (
            when(r.at),
            r.agent_group,
            r.method,
            r.host + r.path,
            r.status,
            r.said(),
            f"{r.duration_ms:.0f}ms",
            r.injected,
        )
        for r in records
    )
    table = _table(("time", "agent", "method", "where", "status", "decision", "took", "injected"), rows)
    return layout("Vault audit", form + (table if records else "<p>No audited requests match.</p>"), user=scope.user)


# --- agents ----------------------------------------------------------------------------------------------


def dropped_table(rows: list[router_ctl.Dropped]) -> str:
    if not rows:
        return "<p>No dropped messages.</p>"
    return _table(
        ("when", "channel", "chat", "sender", "reason"),
        ((when(d.at), d.channel, d.chat_id, d.sender_id, d.reason) for d in rows),
    )


def agents(groups: list[router_ctl.GroupListed], dropped: list[router_ctl.Dropped], scope: Scope, csrf: str) -> str:
    rows = "".join(
        f'<tr><td><a href="/agents/{e(g.name)}">{e(g.name)}</a></td><td>{e(g.assistant_name)}</td>'
        f"<td>{e(g.provider)} {e(g.model)}</td><td>{g.chats}</td><td>{g.sessions}</td></tr>"
        for g in groups
    )
    body = _head_table(("agent group", "assistant", "model", "chats", "sessions"), rows)
    body += f"<h2>Dropped messages</h2>{dropped_table(dropped)}"
    return layout("Agents", body, user=scope.user, csrf=csrf)


def _settings(g: router_ctl.GroupDetail, csrf: str) -> str:
    c = g.container
    return (
        f'<form method="post" action="/agents/{e(g.name)}/settings" id="settings">{csrf_field(csrf)}'
        "<fieldset><legend>Settings (empty: the default from config.toml)</legend>"
        + field("assistant_name", "Assistant name", value=g.assistant_name)
        + field("model", "Model", value=g.model)
        + field("memory", "Container memory", value=c.memory or "", extra=' placeholder="1g"')
        + field("cpus", "Container CPUs", value=str(c.cpus or ""), extra=' inputmode="decimal"')
        + field("idle_timeout", "Idle timeout (s)", value=str(c.idle_timeout or ""), extra=' inputmode="decimal"')
        + '<button type="submit">Save settings</button></fieldset></form>'
    )


def _remove_member(group: str, user: str, csrf: str) -> str:
    return button_form(f"/agents/{group}/members/remove?{urlencode({'user': user})}", csrf, "Remove", user)


def _members(g: router_ctl.GroupDetail, members: list[router_ctl.Member], csrf: str) -> str:
    rows = "".join(
        f"<tr><td>{e(m.user_id)}</td><td>{e(m.added_by)}</td><td>{e(when(m.added_at))}</td>"
        f"<td>{_remove_member(g.name, m.user_id, csrf)}</td></tr>"
        for m in members
    )
    add = (
        f'<form method="post" action="/agents/{e(g.name)}/members" id="add-member">{csrf_field(csrf)}'
        + field("user", "Member (channel:handle)", extra=' required placeholder="telegram:123"')
        + '<button type="submit">Add member</button></form>'
    )
    return _head_table(("member", "added by", "added", ""), rows) + add


def group(
    g: router_ctl.GroupDetail,
    members: list[router_ctl.Member],
    sessions: list[router_ctl.Session],
    dropped: list[router_ctl.Dropped],
    scope: Scope,
    csrf: str,
    note: str = "",
    error: str = "",
) -> str:
    wirings = _table(
        ("channel", "chat", "engage", "senders", "sessions", "priority"),
        (
            (
                w.channel,
                w.chat_name or w.chat_id,
                f"{w.engage_mode} {w.engage_pattern}",
                w.sender_scope,
                w.session_mode,
                w.priority,
            )
            for w in g.wirings
        ),
    )
    sess = _table(
        ("session", "channel", "chat", "thread", "runner", "last message"),
        ((s.id, s.channel, s.chat_id, s.thread_id, s.runner, when(s.last_message_at)) for s in sessions),
    )
    body = (
        notes(note, error)
        + f"<p>Folder {e(g.folder)}; admins: {e(', '.join(g.admins) or 'none of its own')}</p>"
        + _settings(g, csrf)
        + f"<h2>Wirings</h2>{wirings}<h2>Members</h2>{_members(g, members, csrf)}"
        + f"<h2>Sessions</h2>{sess}<h2>Dropped messages</h2>{dropped_table(dropped)}"
    )
    return layout(f"Agent group {g.name}", body, user=scope.user, csrf=csrf)


# --- tasks -----------------------------------------------------------------------------------------------

ACTIONS = {"active": ("pause", "cancel"), "paused": ("resume", "cancel")}


def _task_buttons(t: scheduler_ctl.TaskInfo, csrf: str) -> str:
    return "".join(
        button_form(f"/tasks/{t.id}/{verb}", csrf, verb.capitalize(), t.id) for verb in ACTIONS.get(t.status, ())
    )


def tasks(rows: list[scheduler_ctl.TaskInfo], scope: Scope, csrf: str, note: str = "", error: str = "") -> str:
    body = "".join(
        f'<tr id="t-{e(t.id)}"><td><a href="/tasks/{e(t.id)}">{e(t.id)}</a></td><td>{e(t.agent_group)}</td>'
        f'<td>{e(t.schedule)}</td><td class="status">{e(t.status)}</td><td>{e(t.next_run_local or "-")}</td>'
        f"<td>{e(t.prompt[:80])}</td><td>{_task_buttons(t, csrf)}</td></tr>"
        for t in rows
    )
    table = _head_table(("task", "agent group", "schedule", "status", "next run", "prompt", ""), body)
    return layout("Tasks", notes(note, error) + (table if rows else "<p>No tasks.</p>"), user=scope.user, csrf=csrf)


def task(t: scheduler_ctl.TaskInfo, runs: list[scheduler_ctl.Run], scope: Scope, csrf: str) -> str:
    facts = _table(
        ("agent group", "chat", "schedule", "timezone", "status", "next run", "created by"),
        [
            (
                t.agent_group,
                f"{t.channel}:{t.chat_id}",
                t.schedule,
                t.timezone,
                t.status,
                t.next_run_local or "-",
                t.created_by,
            )
        ],
    )
    history = _table(
        ("scheduled", "outcome", "at", "detail"), ((r.scheduled, r.outcome, when(r.at), r.detail) for r in runs)
    )
    body = (
        f"{facts}<p>{e(t.prompt)}</p>{_task_buttons(t, csrf)}<h2>Runs</h2>{history if runs else '<p>No runs yet.</p>'}"
    )
    return layout(f"Task {t.id}", body, user=scope.user, csrf=csrf)


# --- logs ------------------------------------------------------------------------------------------------


def logs(services: list[str], scope: Scope, csrf: str, error: str = "") -> str:
    items = "".join(f'<li><a href="/logs/{e(s)}">{e(s)}</a></li>' for s in services)
    body = notes("", error) + f"<ul>{items or '<li>No logs here.</li>'}</ul>"
    return layout("Logs", body, user=scope.user, csrf=csrf)


def log(service: str, scope: Scope, csrf: str) -> str:
    body = (
        f"<p>The last lines of {e(service)}, then each new one as it is written.</p>"
        f'<pre id="tail" data-service="{e(service)}" tabindex="0" aria-label="Log of {e(service)}"></pre>'
    )
    return layout(f"Log of {service}", body, user=scope.user, csrf=csrf, script="logs.js")
