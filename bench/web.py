"""What the web path adds to a chat turn, with 200 browser-like clients at once: `clawden run web` and
`clawden run router` on a real nats-server, each client signed in with its own one-time link and session, a
chat of its own, its replies streamed over SSE.

    .venv/bin/python -m bench.web [--clients 200] [--messages 5] [--out bench/results/web.json]

The agent is an echo on the bus (it answers each inbound `web` message with an outbound one on the chat's
lane, at once), so what is timed is the path alone. Web: a client POSTs /chat/<id>/send and waits for the echo
on its open event stream (the service checks origin, session, CSRF and the person's roles, keeps the message,
publishes it, keeps the echo, receipts it, streams it). Bus: the same echo asked directly, an InboundMessage
published to JetStream and the outbound awaited on NATS, by as many clients at once. The difference is the
web's added latency. Memory is the web service's resident set, idle and with every client's stream open.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header

from clawden import control, natsserver, setup
from clawden.bus import connect, ensure_streams, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import router as router_ctl
from clawden.bus.ctl import web as web_ctl

USER = "web:bench"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def spawn(home: Path, url: str, service: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CLAWDEN_HOME=str(home), CLAWDEN_NATS_URL=url)
    env.pop("NOTIFY_SOCKET", None)
    with (home / f"{service}.bench.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "clawden", "run", service], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)


def rss_mb(pid: int) -> dict[str, float]:
    """The process's resident set now and at its peak (VmHWM), in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: round(int(fields[f].split()[0]) / 1024, 1) for k, f in (("rss_mb", "VmRSS"), ("peak_mb", "VmHWM"))}


async def listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Back once the web service takes connections (the bench's own wait, not a test's)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"clawden run web exited ({proc.returncode})")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise SystemExit("clawden run web never listened")
        await asyncio.sleep(0.1)


class Echo:
    """The agent stand-in: every inbound `web` message is answered on its chat's lane, `echo-<message id>`."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self.nc, self.js = nc, js

    async def start(self) -> None:
        decoder = msgspec.json.Decoder(ev.InboundMessage | ev.InboundAction)

        async def answer(msg: Msg) -> None:
            event = decoder.decode(msg.data)
            if not isinstance(event, ev.InboundMessage):
                return
            reply = ev.OutboundMessage(
                id=f"echo-{event.message_id}", route=event.route, text=f"echo: {event.text}", kind="reply"
            )
            subject = subjects.outbound(event.route.channel, event.route.chat_id)
            await self.js.publish(subject, ev.encode(reply), headers={Header.MSG_ID: reply.id})

        await self.nc.subscribe(subjects.inbound("web"), cb=answer)
        await self.nc.flush()


class BrowserLike:
    """One browser-like client: its own session cookie and CSRF token, its chat, its open event stream."""

    def __init__(self, base: str, chat_id: str) -> None:
        self.base, self.chat_id = base, chat_id
        self.http = httpx.AsyncClient(base_url=base, headers={"origin": base}, timeout=120)
        self.csrf = ""
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.open = asyncio.Event()

    async def sign_in(self, link: str) -> None:
        page = await self.http.get(link)
        found = CSRF.search(page.text)
        assert page.status_code == 200 and found, page.text
        token = link.rsplit("/", 1)[1]
        signed = await self.http.post("/login", data={"token": token, "csrf": found.group(1)})
        assert signed.status_code == 303, signed.text
        chats = await self.http.get("/chats")
        csrf = CSRF.search(chats.text)
        assert csrf is not None
        self.csrf = csrf.group(1)

    async def listen(self) -> None:
        async with self.http.stream("GET", f"/chat/{self.chat_id}/events") as stream:
            assert stream.status_code == 200
            self.open.set()
            async for line in stream.aiter_lines():
                if not line.startswith("data: "):
                    continue
                item = json.loads(line[6:])
                waiter = self.waiting.pop(item.get("id", ""), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(time.perf_counter())

    async def turn(self, text: str) -> float:
        mid = uuid.uuid4().hex
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[f"echo-{mid}"] = done
        started = time.perf_counter()
        sent = await self.http.post(
            f"/chat/{self.chat_id}/send",
            data={"text": text, "id": mid, "csrf": self.csrf},
            headers={"x-csrf-token": self.csrf},
        )
        assert sent.status_code == 200, sent.text
        return (await asyncio.wait_for(done, 120) - started) * 1000


async def bus_turns(nc: Client, js: JetStreamContext, clients: int, messages: int) -> list[float]:
    """The same echo without the web: publish inbound to JetStream, await the outbound on NATS."""
    waiting: dict[str, asyncio.Future[float]] = {}
    decoder = msgspec.json.Decoder(ev.OutboundMessage)

    async def seen(msg: Msg) -> None:
        waiter = waiting.pop(decoder.decode(msg.data).id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter())

    sub = await nc.subscribe(subjects.outbound_all("web"), cb=seen)
    await nc.flush()

    async def one(i: int) -> list[float]:
        samples = []
        for n in range(messages):
            mid = uuid.uuid4().hex
            event = ev.InboundMessage(
                route=ev.Route(channel="web", chat_id=f"busonly{i}"),
                message_id=mid,
                sender=ev.Sender(id=USER, name="bench"),
                text=f"bus {i}/{n}",
                sent_at=time.time(),
            )
            done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            waiting[f"echo-{mid}"] = done
            started = time.perf_counter()
            await js.publish(subjects.inbound("web"), ev.encode(event), headers={Header.MSG_ID: event.key})
            samples.append((await asyncio.wait_for(done, 120) - started) * 1000)
        return samples

    found = await asyncio.gather(*(one(i) for i in range(clients)))
    await sub.unsubscribe()
    return [s for samples in found for s in samples]


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)

    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 1), "p95_ms": at(0.95), "max_ms": at(1)}


async def prepare(nc: Client, base: str, clients: int) -> list[BrowserLike]:
    """An owner, and per client a chat wired to `main`, a one-time link, a signed-in session."""
    ask = control.ask_on
    await ask(nc, router_ctl.ROLES_GRANT, router_ctl.RoleGrant(user_id=USER, role="owner"), timeout=30)
    made = []
    for i in range(clients):
        chat_id = f"bench{i}"
        create = router_ctl.ChatCreate(channel="web", chat_id=chat_id, name=f"bench {i}", policy="public")
        await ask(nc, router_ctl.CHATS_CREATE, create)
        await ask(
            nc, router_ctl.WIRINGS_CREATE, router_ctl.WiringCreate(channel="web", chat_id=chat_id, agent_group="main")
        )
        made.append(BrowserLike(base, chat_id))
    links = [(await ask(nc, web_ctl.LOGIN, web_ctl.LoginRequest(user=USER), timeout=30)).url for _ in made]
    for i in range(0, clients, 20):  # twenty sign-ins at a time
        await asyncio.gather(*(c.sign_in(link) for c, link in zip(made[i : i + 20], links[i : i + 20], strict=True)))
    return made


async def run(clients: int, messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="clawden-bench-web-") as tmp:
        home = Path(tmp) / "home"
        setup.init(home)
        port = natsserver.free_port()
        web_port = natsserver.free_port()
        with (home / "config.toml").open("a") as f:
            f.write(f'\n[web]\nlisten = "127.0.0.1:{web_port}"\nlogin_rate = 1000.0\nlogin_burst = 10000\n')
        url = f"nats://127.0.0.1:{port}"
        server = natsserver.start(port, Path(tmp) / "nats")
        nc = await connect(url, "bench-web")
        js = nc.jetstream()
        await ensure_streams(js)
        router = spawn(home, url, "router")
        web = spawn(home, url, "web")
        tasks: list[asyncio.Task[None]] = []
        made: list[BrowserLike] = []
        try:
            await control.ask_on(nc, router_ctl.GROUPS_LIST, router_ctl.ListAll(), timeout=60, wait_for_service=True)
            await listening(web_port, web)
            idle = rss_mb(web.pid)
            await Echo(nc, js).start()
            base = f"http://127.0.0.1:{web_port}"
            made = await prepare(nc, base, clients)
            tasks = [asyncio.create_task(c.listen()) for c in made]
            await asyncio.gather(*(c.open.wait() for c in made))
            await asyncio.gather(*(c.turn("warm") for c in made))  # one turn each, not counted
            streaming = rss_mb(web.pid)

            async def talk(c: BrowserLike) -> list[float]:
                return [await c.turn(f"message {n}") for n in range(messages)]

            started = time.perf_counter()
            found = await asyncio.gather(*(talk(c) for c in made))
            elapsed = time.perf_counter() - started
            web_ms = [s for samples in found for s in samples]
            loaded = rss_mb(web.pid)
            bus_ms = await bus_turns(nc, js, clients, messages)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.http.aclose() for c in made))
            await stop(web)
            await stop(router)
            await nc.close()
            server.terminate()
            server.wait(10)
    web_s, bus_s = summary(web_ms), summary(bus_ms)
    return {
        "clients": clients,
        "messages_each": messages,
        "web": web_s,
        "bus": bus_s,
        "added_median_ms": round(web_s["median_ms"] - bus_s["median_ms"], 1),
        "added_p95_ms": round(web_s["p95_ms"] - bus_s["p95_ms"], 1),
        "web_turns_per_s": round(len(web_ms) / elapsed, 1),
        "web_memory": {"idle": idle, "streams_open": streaming, "after_load": loaded},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=5, help="turns per client, one after another")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(run(args.clients, args.messages))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
