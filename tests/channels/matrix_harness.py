"""The real Matrix bridge process (`clawden run channel@matrix`) against the real Synapse, people as Matrix
clients speaking the client-server API (httpx), and a bus client on the bridge's subjects."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
from aiohttp import web

from tests.channels.harness import Bus, ChannelProcess
from tests.fakes.threaded import ThreadedServer
from tests.fakes.trickle import Trickle
from tests.servers.synapse.fixture import Account, Synapse

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class MatrixBridgeProcess(ChannelProcess):
    """The Matrix bridge against the real Synapse, logged in as `bot`."""

    channel = "matrix"

    def __init__(self, home: Path, nats_url: str, synapse: Synapse, bot: Account, **settings: str) -> None:
        self.synapse = synapse
        self.bot = bot
        super().__init__(home, nats_url, **({"sync_timeout": "2"} | settings))

    def credentials(self) -> dict[str, str]:
        token = json.dumps({"access_token": self.bot.token, "device_id": self.bot.device_id})
        return {"CLAWDEN_MATRIX_TOKEN": token, "CLAWDEN_MATRIX_HOMESERVER": self.synapse.url}


class Person:
    """Someone on the homeserver with an ordinary client: rooms, messages, replies, reactions, files."""

    def __init__(self, synapse: Synapse, account: Account) -> None:
        self.account = account
        self.user_id = account.user_id
        self._since = ""
        self._invited: list[str] = []
        self._ephemeral: dict[str, list[dict[str, Any]]] = {}
        self.http = httpx.AsyncClient(
            base_url=synapse.url, timeout=30, headers={"Authorization": f"Bearer {account.token}"}
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = await self.http.request(method, path, **kwargs)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    async def create_room(
        self, *, invite: list[str], name: str = "", direct: bool = False, encrypted: bool = False
    ) -> str:
        body: dict[str, Any] = {
            "invite": invite,
            "is_direct": direct,
            "preset": "trusted_private_chat" if direct else "private_chat",
        }
        if name:
            body["name"] = name
        if encrypted:
            body["initial_state"] = [
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
            ]
        return str((await self._call("POST", "/_matrix/client/v3/createRoom", json=body))["room_id"])

    async def join(self, room_id: str) -> None:
        await self._call("POST", f"/_matrix/client/v3/join/{quote(room_id)}", json={})

    async def invite(self, room_id: str, user_id: str) -> None:
        await self._call("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite", json={"user_id": user_id})

    async def kick(self, room_id: str, user_id: str) -> None:
        await self._call("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/kick", json={"user_id": user_id})

    async def membership(self, room_id: str, user_id: str) -> str:
        resp = await self.http.get(f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.member/{quote(user_id)}")
        return str(resp.json().get("membership", "")) if resp.status_code == 200 else ""

    async def send(self, room_id: str, content: dict[str, Any], kind: str = "m.room.message") -> str:
        txn = secrets.token_hex(8)
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/send/{kind}/{txn}"
        return str((await self._call("PUT", path, json=content))["event_id"])

    async def say(self, room_id: str, text: str, **extra: Any) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": text, **extra})

    async def _sync(self) -> None:
        """One incremental /sync (from the last `next_batch`): Synapse answers a repeated identical /sync from a
        cache for a while, so an initial sync asked again shows nothing new."""
        params: dict[str, Any] = {"timeout": 1000}
        if self._since:
            params["since"] = self._since
        body = await self._call("GET", "/_matrix/client/v3/sync", params=params)
        self._since = str(body["next_batch"])
        rooms = body.get("rooms") or {}
        self._invited += [r for r in rooms.get("invite", {}) if r not in self._invited]
        for room_id, room in rooms.get("join", {}).items():
            self._ephemeral.setdefault(room_id, []).extend((room.get("ephemeral") or {}).get("events") or [])

    async def invites(self) -> list[str]:
        """Rooms she is invited to, from her own /sync."""
        await self._sync()
        return list(self._invited)

    async def ephemeral(self, room_id: str, kind: str) -> list[dict[str, Any]]:
        """The room's typing notices or receipts (`m.typing`, `m.receipt`) her client has seen so far."""
        await self._sync()
        return [e for e in self._ephemeral.get(room_id, []) if e.get("type") == kind]

    async def upload(self, data: bytes, name: str, mime: str) -> str:
        resp = await self._call(
            "POST", "/_matrix/media/v3/upload", params={"filename": name}, content=data, headers={"Content-Type": mime}
        )
        return str(resp["content_uri"])

    async def download(self, mxc: str) -> bytes:
        server, _, media = mxc.removeprefix("mxc://").partition("/")
        resp = await self.http.get(f"/_matrix/client/v1/media/download/{server}/{media}")
        resp.raise_for_status()
        return resp.content

    async def events(self, room_id: str, sender: str | None = None) -> list[dict[str, Any]]:
        """The room's events, oldest first (the last 1000), optionally only one sender's."""
        body = await self._call(
            "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/messages", params={"dir": "b", "limit": 1000}
        )
        events = list(reversed(body.get("chunk") or []))
        return [e for e in events if sender is None or e.get("sender") == sender]

    async def messages_from(self, room_id: str, sender: str) -> list[dict[str, Any]]:
        return [e for e in await self.events(room_id, sender) if e.get("type") == "m.room.message"]


class MatrixBus(Bus):
    """The bus side of a test, on the Matrix bridge's subjects."""

    channel = "matrix"


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


class MediaProxy(ThreadedServer):
    """The bridge's homeserver as a proxy in front of Synapse: everything passes through unchanged, except media
    downloads, which answer the statuses in `failures` first (a media repository in trouble), then pass, at the
    pace a `trickle` sets when there is one. `downloads` has the status of each media download, in turn."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.failures: list[int] = []
        self.trickle: Trickle | None = None
        self.downloads: list[int] = []
        self.url = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> MediaProxy:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{path:.*}", self._pass)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self

    async def stop(self) -> None:
        if self.trickle is not None:
            self.trickle.finish()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> MediaProxy:
        self._serve_in_thread(host, port, "matrix-media-proxy")
        return self

    async def _pass(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        media = "/media/" in request.path and "/download/" in request.path
        if media:
            with self._lock:
                failure = self.failures.pop(0) if self.failures else None
            if failure is not None:
                self.downloads.append(failure)
                return web.Response(status=failure, text="upstream failure")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        if media:
            self.downloads.append(answer.status)
            if self.trickle is not None and answer.status == 200:
                return await self.trickle.serve(request, body)
        return web.Response(status=answer.status, body=body, headers=kept)
