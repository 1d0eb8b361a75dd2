"""The web app (Starlette): sign-in by one-time link, the chats, status and approvals pages.

Every POST is checked twice before anything happens: its Origin must be ours, and it must carry the
session's CSRF token. The cookie is HttpOnly and SameSite=Strict (Secure when `public_url` is https)."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clawden.bus.ctl import router as router_ctl
from clawden.installed import Scope as JournalScope
from services.web import auth, files, pages
from services.web.backend import Backend, BackendError
from services.web.channel import CHANNEL, Hub, NotStored, Refused, WebChannel
from services.web.dashboard import Dashboard
from services.web.scope import OutOfScope, Scope
from services.web.store import Session, Upload, WebStore

log = logging.getLogger("clawden.web")
STATIC = Path(__file__).parent / "static"
MAX_FORM = 64 * 1024
KEEPALIVE = 15.0  # seconds between comments on an idle stream, so proxies keep it open
HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    # A login link's token never leaves in a Referer to another site; "no-referrer" would make Chromium send
    # `Origin: null` on our own form posts, which the Origin check must refuse.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


@dataclass(frozen=True)
class Settings:
    origin: str  # what a browser on our pages sends as Origin
    secure: bool  # the cookie is Secure: we are reached over https (public_url)
    link_seconds: float
    session_seconds: float
    proxied: bool = False  # `public_url` is another address than ours: browsers come through a proxy here


class Form(dict[str, str]):
    """A posted form: each field's last value, and every value of a repeated one (checkboxes) by `all`."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__({k: v[-1] for k, v in fields.items()})
        self.lists = fields

    def all(self, key: str) -> list[str]:
        return [v for v in self.lists.get(key, []) if v]


class Denied(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class Web:
    def __init__(
        self,
        store: WebStore,
        channel: WebChannel,
        hub: Hub,
        backend: Backend,
        settings: Settings,
        limit: auth.LoginLimit,
        logs: Path | None = None,
        journal: JournalScope | None = None,
        uploads: Path | None = None,
        sessions: Path | None = None,
    ) -> None:
        self.store = store
        self.channel = channel
        self.hub = hub
        self.backend = backend
        self.settings = settings
        self.limit = limit
        self.logs = logs or Path("/nonexistent")  # <home>/logs: what the logs pages follow
        self.journal = journal  # under systemd, the units' journal instead: no files there
        self.uploads = uploads or Path("/nonexistent")  # <data>/channels/web/files: where the runner takes them
        self.sessions = sessions or Path("/nonexistent")  # the agents' outboxes are under it: downloads
        self.stopping = asyncio.Event()  # set when the service stops: open log tails end

    # --- checks -------------------------------------------------------------------------------------

    async def session(self, request: Request) -> Session | None:
        sid = request.cookies.get(auth.COOKIE, "")
        return await self.store.run(self.store.session, sid, time.time()) if sid else None

    def from_us(self, request: Request) -> None:
        if not auth.origin_ok(request.headers.get("origin"), self.settings.origin):
            log.warning("refused a POST to %s from origin %r", request.url.path, request.headers.get("origin"))
            raise Denied(403, "refused: this request did not come from Clawden's own pages")

    async def form(self, request: Request) -> Form:
        self.from_us(request)
        body = await read_body(request, MAX_FORM, f"refused: a form may be at most {MAX_FORM} bytes")
        try:
            fields = urllib.parse.parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise Denied(400, "refused: the form is not UTF-8") from None
        return Form(fields)

    async def signed_in(self, request: Request) -> Session:
        found = await self.session(request)
        if found is None:
            raise Denied(401, "sign in first: run `clawden web login` on the server")
        return found

    async def posted(self, request: Request) -> tuple[Session, Form]:
        """A state-changing request: from our origin, signed in, with this session's CSRF token."""
        form = await self.form(request)
        found = await self.signed_in(request)
        csrf_ok(request, form.get("csrf") or request.headers.get("x-csrf-token", ""), found)
        return found, form

    async def scoped(self, request: Request) -> tuple[Session, Scope]:
        found = await self.signed_in(request)
        return found, await self.backend.scope(found.user_id)

    async def web_chat(self, scope: Scope, chat_id: str) -> router_ctl.Chat:
        """One web chat, if it is wired to a group this person administers (else as if there were none)."""
        return self._mine(scope, await self.backend.chats(CHANNEL), chat_id)

    async def may_write(self, user: str, chat_id: str) -> None:
        """Before a message or a press: the person's roles and the chat's wirings, asked of the router at once."""
        scope, rows = await asyncio.gather(self.backend.scope(user), self.backend.chats(CHANNEL))
        self._mine(scope, rows, chat_id)

    def _mine(self, scope: Scope, rows: list[router_ctl.Chat], chat_id: str) -> router_ctl.Chat:
        row = next((r for r in rows if r.chat_id == chat_id), None)
        if row is None or not scope.sees_any(row.wired):
            raise Denied(404 if row is None else 403, "no such web chat (see /chats)" if row is None else _no(scope))
        return row

    def source(self, request: Request) -> str:
        """Who is signing in, for the rate limit and the log: behind our proxy, the visitor it names."""
        peer = request.client.host if request.client else "unknown"
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))  # a second header line counts too
        return auth.client_source(peer, forwarded, self.settings.proxied)

    def page(self, text: str, status: int = 200) -> HTMLResponse:
        return html(text, status)

    def stream_headers(self) -> dict[str, str]:
        return {**HEADERS, "x-accel-buffering": "no"}

    # --- sign in --------------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        if await self.session(request) is None:
            return html(pages.signed_out())
        return RedirectResponse("/chats", 303)

    async def login_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        wait = self.limit.take(self.source(request), time.monotonic())
        if wait > 0:
            return html(pages.message("Too many sign-in attempts; try again shortly."), 429, retry(wait))
        state = await self.store.run(self.store.check_link, token, time.time())
        if state != "ok":
            return html(pages.message(auth.REFUSALS[state], title="Sign in"), 410)
        # No session yet, so the form's CSRF token is a double-submit pair: the same value in a cookie.
        csrf = auth.new_secret()
        response = html(pages.login(token, csrf))
        response.set_cookie(
            "clawden_login", csrf, max_age=600, httponly=True, samesite="strict", secure=self.settings.secure
        )
        return response

    async def login(self, request: Request) -> Response:
        wait = self.limit.take(self.source(request), time.monotonic())
        if wait > 0:
            return html(pages.message("Too many sign-in attempts; try again shortly."), 429, retry(wait))
        form = await self.form(request)
        if not auth.same_secret(form.get("csrf", ""), request.cookies.get("clawden_login", "")):
            raise Denied(403, "refused: open the sign-in link again")
        sid, csrf = auth.new_secret(), auth.new_secret()
        found = await self.store.run(
            self.store.use_link, form.get("token", ""), sid, csrf, time.time(), self.settings.session_seconds
        )
        if not isinstance(found, Session):
            log.warning(
                "refused a sign-in from %s: the link is %s",
                self.source(request),
                found,
                extra={"source": self.source(request)},
            )
            return html(pages.message(auth.REFUSALS[found], title="Sign in"), 410)
        log.info("%s signed in from %s", found.user_id, self.source(request), extra={"user": found.user_id})
        response = RedirectResponse("/chats", 303)
        response.headers.append(
            "set-cookie",
            auth.session_cookie(sid, secure=self.settings.secure, max_age=int(self.settings.session_seconds)),
        )
        response.delete_cookie("clawden_login")
        return response

    async def logout(self, request: Request) -> Response:
        await self.posted(request)
        await self.store.run(self.store.end_session, request.cookies.get(auth.COOKIE, ""))
        response = RedirectResponse("/", 303)
        response.delete_cookie(auth.COOKIE)
        return response

    # --- chats ----------------------------------------------------------------------------------------

    async def chats(self, request: Request) -> Response:
        found, scope = await self.scoped(request)
        rows, groups = await asyncio.gather(self.backend.chats(CHANNEL), self.backend.groups())
        mine = [r for r in rows if scope.sees_any(r.wired)]
        return html(pages.chats(mine, [g for g in groups if scope.sees(g)], found.csrf, found.user_id))

    async def new_chat(self, request: Request) -> Response:
        found, form = await self.posted(request)
        scope = await self.backend.scope(found.user_id)
        group = form.get("group", "")
        scope.need(group)
        chat_id = await self.backend.new_chat(CHANNEL, form.get("name", "")[:80], group)
        await self.backend.changed(
            found.user_id, "chat_created", f"made web chat {chat_id} for {group}", chat_id=chat_id
        )
        return RedirectResponse(f"/chat/{chat_id}", 303)

    async def chat(self, request: Request) -> Response:
        found, scope = await self.scoped(request)
        chat_id = request.path_params["chat_id"]
        row = await self.web_chat(scope, chat_id)
        history = await self.store.run(self.store.history, chat_id)
        return html(pages.chat(chat_id, row.name, history, found.csrf, found.user_id))

    async def send(self, request: Request) -> Response:
        found, form = await self.posted(request)
        await self.may_write(found.user_id, request.path_params["chat_id"])
        mid = form.get("id") or uuid.uuid4().hex
        if not mid.isalnum() or len(mid) > 64:
            raise Denied(400, "refused: a message id is letters and digits")
        try:
            await self.channel.say(
                request.path_params["chat_id"], found.user_id, name(found), form.get("text", ""), mid, form.all("files")
            )
        except Refused as exc:
            raise Denied(400, str(exc)) from None
        except NotStored as exc:
            raise Denied(503, str(exc)) from None
        return JSONResponse({"id": mid}, headers=HEADERS)

    async def upload(self, request: Request) -> Response:
        """A file for the next message, as the raw body (chat.js): checked for who sends it before it is read,
        then for its size and type, and kept under a name of ours where the runner takes bridges' files."""
        self.from_us(request)
        found = await self.signed_in(request)
        csrf_ok(request, request.headers.get("x-csrf-token", ""), found)
        chat_id = request.path_params["chat_id"]
        await self.may_write(found.user_id, chat_id)
        filename = files.safe_name(request.query_params.get("name", ""))
        limit = files.MAX_UPLOAD
        data = await read_body(request, limit, f"refused: a file may be at most {limit // (1024 * 1024)} MB")
        if not data:
            raise Denied(400, f"refused: {filename} is empty")
        try:
            mime = files.classify(filename, data[: files.SNIFF])
        except files.Refused as exc:
            raise Denied(415, f"refused: {exc}") from None
        upload_id = secrets.token_hex(16)
        path = await asyncio.to_thread(keep_upload, self.uploads / upload_id, filename, data)
        upload = Upload(upload_id, chat_id, found.user_id, filename, mime, len(data), str(path))
        await self.store.run(self.store.uploaded, upload, time.time())
        self.channel.counts.uploads += 1
        log.info("%s uploaded %s (%s, %d bytes) to web chat %s", found.user_id, filename, mime, len(data), chat_id)
        return JSONResponse({"upload": upload_id, "name": filename, "mime": mime, "size": len(data)}, headers=HEADERS)

    async def download(self, request: Request) -> Response:
        """A file the agent sent in this chat: only a path its outbound event named, still in a session outbox,
        to whoever may read the chat; always as an attachment, never shown as a page of ours."""
        _, scope = await self.scoped(request)
        chat_id, mid = request.path_params["chat_id"], request.path_params["message_id"]
        await self.web_chat(scope, chat_id)
        named = await self.store.run(self.store.sent_file, chat_id, mid, request.path_params["index"])
        path = await asyncio.to_thread(files.outbox_file, self.sessions, named) if named else None
        if path is None:
            raise Denied(404, "no such file: the agent did not send it here, or its session is gone")
        headers = {**HEADERS, "content-disposition": files.disposition(path.name)}
        self.channel.counts.downloads += 1
        return FileResponse(path, media_type="application/octet-stream", headers=headers)

    async def press(self, request: Request) -> Response:
        found, form = await self.posted(request)
        await self.may_write(found.user_id, request.path_params["chat_id"])
        try:
            await self.channel.press(
                request.path_params["chat_id"], found.user_id, name(found), form.get("card", ""), form.get("button", "")
            )
        except Refused as exc:
            raise Denied(400, str(exc)) from None
        return JSONResponse({"pressed": True}, headers=HEADERS)

    async def events(self, request: Request) -> Response:
        """The chat's stream: everything kept so far, then each message, edit and typing as it comes. A page
        keys messages by id, so after a reconnect (or a restart of this service) nothing shows twice."""
        _, scope = await self.scoped(request)
        chat_id = request.path_params["chat_id"]
        await self.web_chat(scope, chat_id)
        queue = self.hub.watch(chat_id)
        history = await self.store.run(self.store.history, chat_id)

        async def stream() -> AsyncIterator[str]:
            try:
                for shown in history:
                    yield sse({"kind": "message", **shown.as_json()})
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if item["kind"] == "end":
                        return
                    yield sse(item)
            finally:
                self.hub.leave(chat_id, queue)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={**HEADERS, "x-accel-buffering": "no"}
        )

    # --- dashboard ------------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        found, scope = await self.scoped(request)
        scope.need_everything("the status of every service and container")
        return html(pages.status(await self.backend.status(), found.user_id, found.csrf))

    async def approvals(self, request: Request) -> Response:
        found, scope = await self.scoped(request)
        scope.need_admin("approvals")
        rows = [r for r in await self.backend.pending_approvals() if scope.sees(r.agent_group)]
        return html(pages.approvals(rows, found.user_id, found.csrf, request.query_params.get("note", "")[:200]))

    async def decide(self, request: Request) -> Response:
        found, form = await self.posted(request)
        approval_id = request.path_params["approval_id"]
        scope = await self.backend.scope(found.user_id)
        asked = await self.backend.approval(approval_id)
        scope.need(asked.agent_group)
        decided = await self.backend.decide(approval_id, form.get("choice", ""), found.user_id)
        summary = f"decided {approval_id}: {decided.status}"
        await self.backend.changed(found.user_id, "approval_decided", summary, approval_id=approval_id)
        note = urllib.parse.quote(f"{approval_id} is {decided.status} by {decided.decided_by}")
        return RedirectResponse(f"/approvals?note={note}", 303)


def csrf_ok(request: Request, given: str, found: Session) -> None:
    if not auth.same_secret(given, found.csrf):
        log.warning("refused a POST to %s without the session's CSRF token", request.url.path)
        raise Denied(403, "refused: the form is stale or did not come from Clawden's pages; reload the page")


async def read_body(request: Request, limit: int, refusal: str) -> bytes:
    """The body, refused (413) as soon as it says or proves it is over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Denied(413, refusal)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Denied(413, refusal)
    return bytes(body)


def keep_upload(folder: Path, filename: str, data: bytes) -> Path:
    """Into a folder of its own (a random name), so two uploads of one name never meet."""
    folder.mkdir(parents=True, mode=0o700)
    path = folder / filename
    path.write_bytes(data)
    return path


def _no(scope: Scope) -> str:
    return f"refused: that chat is not wired to an agent group you administer ({scope.user})"


def name(found: Session) -> str:
    return found.user_id.partition(":")[2] or found.user_id


def retry(wait: float) -> dict[str, str]:
    return {"retry-after": str(max(1, round(wait)))}


def sse(item: dict[str, object]) -> str:
    return f"data: {json.dumps(item)}\n\n"


def html(text: str, status: int = 200, extra: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(text, status, headers={**HEADERS, **(extra or {})})


async def _denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Denied)
    if request.method == "POST" and request.headers.get("x-csrf-token") is not None:
        return JSONResponse({"error": exc.text}, exc.status, headers=HEADERS)  # chat.js shows it
    return html(pages.message(exc.text), exc.status)


async def _out_of_scope(request: Request, exc: Exception) -> Response:
    log.warning("refused %s %s: %s", request.method, request.url.path, exc)
    if request.method == "POST" and request.headers.get("x-csrf-token") is not None:
        return JSONResponse({"error": str(exc)}, 403, headers=HEADERS)
    return html(pages.message(str(exc)), 403)


async def _backend_failed(request: Request, exc: Exception) -> Response:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    if request.headers.get("x-csrf-token") is not None:
        return JSONResponse({"error": str(exc)}, 502, headers=HEADERS)
    return html(pages.message(str(exc)), 502)


def build(web: Web) -> Starlette:
    board = Dashboard(web)
    routes = [
        Route("/", web.home),
        Route("/login/{token}", web.login_page),
        Route("/login", web.login, methods=["POST"]),
        Route("/logout", web.logout, methods=["POST"]),
        Route("/chats", web.chats),
        Route("/chats", web.new_chat, methods=["POST"]),
        Route("/chat/{chat_id}", web.chat),
        Route("/chat/{chat_id}/send", web.send, methods=["POST"]),
        Route("/chat/{chat_id}/press", web.press, methods=["POST"]),
        Route("/chat/{chat_id}/upload", web.upload, methods=["POST"]),
        Route("/chat/{chat_id}/files/{message_id}/{index:int}", web.download),
        Route("/chat/{chat_id}/events", web.events),
        Route("/status", web.status),
        Route("/approvals", web.approvals),
        Route("/approvals/{approval_id}", web.decide, methods=["POST"]),
        Route("/vault", board.vault),
        Route("/vault/audit", board.audit),
        Route("/vault/secrets", board.secret_add, methods=["POST"]),
        Route("/vault/secrets/{name}/remove", board.secret_remove, methods=["POST"]),
        Route("/vault/grants", board.secret_grant, methods=["POST"]),
        Route("/vault/rules", board.rule_add, methods=["POST"]),
        Route("/vault/rules/{name}/remove", board.rule_remove, methods=["POST"]),
        Route("/vault/egress/{group}", board.egress, methods=["POST"]),
        Route("/agents", board.agents),
        Route("/agents/{group}", board.group),
        Route("/agents/{group}/settings", board.settings, methods=["POST"]),
        Route("/agents/{group}/members", board.member_add, methods=["POST"]),
        Route("/agents/{group}/members/remove", board.member_remove, methods=["POST"]),
        Route("/tasks", board.tasks),
        Route("/tasks/{task_id}", board.task),
        Route("/tasks/{task_id}/{verb}", board.task_set, methods=["POST"]),
        Route("/logs", board.logs),
        Route("/logs/{service}", board.log),
        Route("/logs/{service}/events", board.log_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes, exception_handlers={Denied: _denied, OutOfScope: _out_of_scope, BackendError: _backend_failed}
    )
