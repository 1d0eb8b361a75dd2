"""The pages, rendered on the server as plain HTML (every value escaped here, nowhere else); the only
script is static/chat.js, and the only style static/style.css."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from clawden.bus.ctl import approvals as approvals_ctl
from clawden.bus.ctl import router as router_ctl
from clawden.survey import service_state
from services.web.files import ACCEPT, MAX_FILES
from services.web.store import Shown


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"


def layout(title: str, body: str, *, user: str = "", csrf: str = "", script: str = "") -> str:
    nav = ""
    if user:
        nav = (
            '<nav aria-label="Main"><a href="/chats">Chats</a> <a href="/status">Status</a> '
            '<a href="/approvals">Approvals</a> <a href="/vault">Vault</a> <a href="/agents">Agents</a> '
            '<a href="/tasks">Tasks</a> <a href="/logs">Logs</a> '
            f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{e(csrf)}">'
            f'<button type="submit">Sign out {e(user)}</button></form></nav>'
        )
    tag = f'<script src="/static/{e(script)}" defer></script>' if script else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(title)} · Clawden</title><link rel="stylesheet" href="/static/style.css">{tag}</head>'
        f"<body><header><strong>Clawden</strong>{nav}</header><main><h1>{e(title)}</h1>{body}</main></body></html>"
    )


def message(text: str, *, title: str = "Clawden") -> str:
    return layout(title, f'<p role="alert">{e(text)}</p>')


def login(token: str, csrf: str) -> str:
    body = (
        "<p>This link signs this browser in to Clawden. It works once.</p>"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="token" value="{e(token)}"><input type="hidden" name="csrf" value="{e(csrf)}">'
        '<button type="submit" id="sign-in">Sign in</button></form>'
    )
    return layout("Sign in", body)


def signed_out() -> str:
    return layout("Sign in", "<p>Run <code>clawden web login</code> on the server and open the link it prints.</p>")


def chats(rows: list[router_ctl.Chat], groups: list[str], csrf: str, user: str) -> str:
    items = "".join(
        f'<li><a href="/chat/{e(r.chat_id)}">{e(r.name or r.chat_id)}</a> <small>{e(", ".join(r.wired))}</small></li>'
        for r in rows
    )
    options = "".join(f'<option value="{e(g)}">{e(g)}</option>' for g in groups)
    body = (
        f'<ul class="chats">{items or "<li>No web chats yet.</li>"}</ul>'
        '<h2>New chat</h2><form method="post" action="/chats">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<label for="name">Name</label> <input id="name" name="name" required maxlength="80"> '
        f'<label for="group">Agent group</label> <select id="group" name="group">{options}</select> '
        '<button type="submit">Create</button></form>'
    )
    return layout("Chats", body, user=user, csrf=csrf)


def bubble(shown: Shown) -> str:
    """One message; the same markup chat.js builds for a streamed one."""
    buttons = ""
    if shown.card is not None:
        title = f"<strong>{e(shown.card.title)}</strong><p>{e(shown.card.body)}</p>" if shown.card.title else ""
        buttons = title + "".join(
            f'<button type="button" class="press" data-card="{e(shown.id)}" data-button="{e(b.id)}">'
            f"{e(b.label)}</button>"
            for b in shown.card.buttons
        )
    return (
        f'<li class="msg {e(shown.direction)}" id="m-{e(shown.id)}" data-version="{shown.version}">'
        f'<span class="who">{e(shown.sender)}</span><span class="text">{e(shown.text)}</span>'
        f'{attached(shown)}<span class="card">{buttons}</span></li>'
    )


def attached(shown: Shown) -> str:
    """A message's files: the agent's as download links (by message and index, never by path), the person's
    own by name."""
    if not shown.files:
        return ""
    base = f"/chat/{quote(shown.chat_id, safe='')}/files/{quote(shown.id, safe='')}"  # as chat.js encodes them
    items = "".join(
        f'<li><a class="file" href="{e(base)}/{i}" download>{e(n)}</a></li>'
        if shown.direction == "out"
        else f'<li class="file">{e(n)}</li>'
        for i, n in enumerate(shown.files)
    )
    return f'<ul class="files" aria-label="Files">{items}</ul>'


def chat(chat_id: str, name: str, history: Iterable[Shown], csrf: str, user: str) -> str:
    body = (
        f'<ol id="log" aria-live="polite" data-chat="{e(chat_id)}" data-csrf="{e(csrf)}">'
        f"{''.join(bubble(s) for s in history)}</ol>"
        '<p id="typing" hidden>typing…</p><p id="error" role="alert"></p>'
        f'<form id="say" method="post" action="/chat/{e(chat_id)}/send" data-max-files="{MAX_FILES}">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        '<label for="text" class="hidden">Message</label>'
        '<textarea id="text" name="text" rows="2" placeholder="Message"></textarea>'
        '<label for="file" class="attach">Attach files '
        f'<input type="file" id="file" multiple accept="{e(ACCEPT)}"></label>'
        '<button type="submit">Send</button></form>'
    )
    return layout(name or chat_id, body, user=user, csrf=csrf, script="chat.js")


def scroller(headers: tuple[str, ...], head: str, body: str) -> str:
    """A table in a region that scrolls sideways on a phone, focusable so the keyboard can scroll it too."""
    label = "Table: " + ", ".join(h for h in headers if h)
    return (
        f'<div class="scroll" role="region" tabindex="0" aria-label="{e(label)}">'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _table(headers: tuple[str, ...], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return scroller(headers, head, body)


def status(report: dict[str, Any], user: str, csrf: str) -> str:
    services = _table(
        ("service", "state", "pid", "uptime", "why"),
        (
            (
                s["name"],
                service_state(s),
                s.get("pid") or "-",
                duration(s.get("uptime")),
                s.get("error") or s.get("trouble") or "",
            )
            for s in report["services"]
        ),
    )
    down = f'<p role="alert">Not running: {e(", ".join(report["down"]))}</p>' if report["down"] else ""
    containers = report["containers"]
    if "error" in containers:
        boxes = f"<p>{e(containers['error'])}</p>"
    else:
        running = (
            (c["container"] or "-", c["agent_group"], c["session_id"], c["state"], duration(c["idle"]))
            for c in containers["running"]
        )
        boxes = _table(("container", "group", "session", "state", "idle"), running)
        boxes += f"<p>{len(containers['waiting'])} waiting for a slot (at most {e(containers['max'])} at once)</p>"
    streams = report["streams"]
    backlog = (
        f"<p>{e(streams['error'])}</p>"
        if isinstance(streams, dict)
        else _table(
            ("stream", "durable", "pending", "unacked", "redelivered"),
            (
                (
                    r["stream"],
                    r["durable"],
                    "-" if "pending" in r and r["pending"] is None else r.get("pending", "missing"),
                    r.get("ack_pending", ""),
                    r.get("redelivered", ""),
                )
                for r in streams
            ),
        )
    )
    body = (
        f"<p>NATS {e(report['nats'])}, asked at {e(when(report['at']))} "
        '<button type="button" id="live" aria-pressed="false">Pause live refresh</button></p>'
        f"{down}"
        f"<h2>Services</h2>{services}<h2>Containers</h2>{boxes}<h2>Backlogs</h2>{backlog}"
    )
    return layout("Status", body, user=user, csrf=csrf, script="refresh.js")


def approvals(rows: list[approvals_ctl.ApprovalDetail], user: str, csrf: str, note: str = "") -> str:
    items = []
    for r in rows:
        buttons = "".join(
            f'<button type="submit" name="choice" value="{e(b.id)}">{e(b.label)}</button>' for b in r.buttons
        )
        # Why it is still pending where that is said (the router has not named its approvers yet), and its choices.
        action = f" <em>{e(r.reason)}</em>" if r.reason else ""
        if buttons:
            action += (
                f'<form method="post" action="/approvals/{e(r.id)}">'
                f'<input type="hidden" name="csrf" value="{e(csrf)}">{buttons}</form>'
            )
        items.append(
            f'<li class="approval" id="a-{e(r.id)}"><strong>{e(r.title or r.kind)}</strong> '
            f"<span>{e(r.body)}</span> <small>{e(r.agent_group)}, asked {e(when(r.created_at))},"
            f" expires {e(when(r.expires_at))}</small>{action}</li>"
        )
    shown = f'<p role="status">{e(note)}</p>' if note else ""
    return layout(
        "Approvals",
        f'{shown}<ul class="approvals">{"".join(items) or "<li>Nothing waits.</li>"}</ul>',
        user=user,
        csrf=csrf,
    )
