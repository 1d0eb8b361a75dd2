"""The approvals service as real processes (`clawden up` with the router and approvals) on a real NATS:
a requester waits on its decision while the owner clicks over the local channel, through the router.
Where the router must be away, or approvals stopped and started, `clawden run approvals` runs alone."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config, natsauth, natsserver, setup
from clawden.bus import bind, connect, consume, ensure_streams, publish, streams, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import approvals as approvals_ctl
from clawden.bus.ctl import router as router_ctl
from clawden.chat import terminal_outbound
from clawden.control import ask_on
from tests.conftest import NatsServer
from tests.eventually import eventually

OWNER = f"local:{getpass.getuser()}"  # the login that first ran the router owns the install
TERMINAL = "terminal"  # where the owner's cards go on the local channel


class Up:
    def __init__(self, home: Path) -> None:
        port = natsserver.free_port()
        cfg = setup.init(home)
        cfg.path("config.toml").write_text(f"[nats]\nport = {port}\n")
        self.url = f"nats://127.0.0.1:{port}"
        self.home = home
        self.out = (home / "up.log").open("w")  # a file, not a pipe nobody drains
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clawden", "up", "--service", "router", "--service", "approvals"],
            env=dict(os.environ, CLAWDEN_HOME=str(home)),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while "all services ready" not in (home / "up.log").read_text():
            assert time.monotonic() < deadline and self.proc.poll() is None, (home / "up.log").read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.out.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    stack = Up(tmp_path_factory.mktemp("home"))
    yield stack
    stack.stop()


class Owner:
    """The owner's terminal on the bus, like `clawden chat`: shows cards and edits, receipts them, and
    presses buttons by publishing the InboundAction the terminal would."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.seen: list[ev.OutboundMessage | ev.OutboundEdit] = []
        self.ids: dict[str, str] = {}  # outbound id -> the platform id the terminal gave it

    async def on_outbound(self, event: ev.OutboundMessage | ev.OutboundEdit, msg: Msg) -> None:
        if event.route.chat_id != TERMINAL:
            return
        self.seen.append(event)
        if isinstance(event, ev.OutboundMessage):
            self.ids[event.id] = platform_id = uuid.uuid4().hex
            await publish(
                self.js,
                subjects.receipt("local"),
                ev.DeliveryReceipt(outbound_id=event.id, route=event.route, ok=True, platform_message_id=platform_id),
                msg_id=f"receipt:{event.id}",
            )

    async def first(self, kind: type[Any], timeout: float = 20, **where: Any) -> Any:
        def found() -> Any:
            return next(
                (e for e in self.seen if isinstance(e, kind) and all(v in getattr(e, k) for k, v in where.items())),
                None,
            )

        return await eventually(found, timeout, lambda: f"no {kind.__name__} with {where}: {self.seen[-3:]}")

    async def press(self, card: ev.OutboundMessage, button: str, who: str = OWNER) -> None:
        action = self.action(card, button, who)
        await publish(self.js, subjects.inbound("local"), action, msg_id=action.key)

    def action(self, card: ev.OutboundMessage, button: str, who: str = OWNER) -> ev.InboundAction:
        return ev.InboundAction(
            route=card.route,
            action_id=uuid.uuid4().hex,
            sender=ev.Sender(id=who, name=who.split(":", 1)[1]),
            card_id=card.id,
            button_id=button,
            message_id=self.ids[card.id],
            sent_at=time.time(),
        )


def held_request(
    rid: str, ttl: float = 120, host: str = "api.github.com", approvers: tuple[str, ...] = (), agent_group: str = "main"
) -> ev.ApprovalRequest:
    """A request as the vault asks it, holding an agent's call to `host`."""
    return ev.ApprovalRequest(
        id=rid,
        kind="credential",
        requester="vault",
        agent_group=agent_group,
        card=ev.Card(
            title="held",
            buttons=(
                ev.Button(id="approve", label="Approve", style="primary"),
                ev.Button(id="deny", label="Deny", style="danger"),
            ),
        ),
        approvers=approvers,
        expires_at=time.time() + ttl,
        context={
            "method": "POST",
            "host": host,
            "path": "/repos/me/x/issues",
            "rule": "github writes",
            "body_preview": '{"title": "bug"}',
        },
    )


class Requester:
    """Waits on a decision the way the vault does: subscribed to its decision subject before asking."""

    def __init__(self, nc: Client, rid: str) -> None:
        self.nc = nc
        self.rid = rid
        self.decisions: asyncio.Queue[ev.ApprovalDecision] = asyncio.Queue()

    async def ask(
        self, ttl: float = 120, host: str = "api.github.com", approvers: tuple[str, ...] = (), agent_group: str = "main"
    ) -> float:
        """Publish the request (without approvers, the approvals service asks the router); its expiry."""

        async def got(msg: Msg) -> None:
            await self.decisions.put(ev.decoder_for(ev.ApprovalDecision).decode(msg.data))

        await self.nc.subscribe(subjects.approval_decision(self.rid), cb=got)
        request = held_request(self.rid, ttl, host, approvers, agent_group)
        await publish(self.nc.jetstream(), subjects.APPROVAL_REQUEST, request, msg_id=f"vault:{self.rid}")
        return request.expires_at

    async def decision(self, timeout: float = 20) -> ev.ApprovalDecision:
        return await asyncio.wait_for(self.decisions.get(), timeout)


@contextlib.asynccontextmanager
async def reading_as_owner(nc: Client) -> AsyncIterator[Owner]:
    """The owner's terminal chat, reading the cards and notes sent to it until the block ends."""
    owner = Owner(nc)
    stopping = asyncio.Event()
    puller = await bind(nc.jetstream(), terminal_outbound(TERMINAL))
    task = asyncio.create_task(
        consume(
            puller,
            ev.OutboundMessage | ev.OutboundEdit,  # type: ignore[arg-type]
            owner.on_outbound,
            stopping=stopping,
        )
    )
    try:
        yield owner
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def bus(up: Up) -> AsyncIterator[tuple[Client, Owner]]:
    # The owner's identity: the stack's NATS admits only known keys.
    seed = natsauth.seed_path(config.load(up.home), natsauth.CLI).read_text().strip()
    nc = await connect(up.url, "test", nkeys_seed_str=seed)
    await ensure_streams(nc.jetstream())
    async with reading_as_owner(nc) as owner:
        yield nc, owner
    await nc.close()


async def control(nc: Client, verb: str, payload: dict[str, Any]) -> Any:
    reply = await nc.request(subjects.ctl("approvals", verb), json.dumps(payload).encode(), timeout=10)
    return json.loads(reply.data)


async def test_owners_approve_over_the_local_channel_releases_the_waiting_request(bus: tuple[Client, Owner]) -> None:
    nc, owner = bus
    requester = Requester(nc, "vault-approve")
    await requester.ask()
    card = await owner.first(ev.OutboundMessage, text="api.github.com")
    assert "POST https://api.github.com/repos/me/x/issues" in card.card.body and requester.decisions.empty()
    await owner.press(card, "approve")
    decision = await requester.decision()
    assert (decision.decision, decision.decided_by) == ("approved", OWNER)
    edit = await owner.first(ev.OutboundEdit, target_message_id=owner.ids[card.id])
    assert f"Approved by {OWNER}" in edit.text and edit.card.buttons == ()


async def test_owners_deny_fails_the_request(bus: tuple[Client, Owner]) -> None:
    nc, owner = bus
    requester = Requester(nc, "vault-deny")
    await requester.ask(host="deny.example.com")
    card = await owner.first(ev.OutboundMessage, text="deny.example.com")
    await owner.press(card, "deny")
    assert (await requester.decision()).decision == "denied"
    assert "Denied by" in (await owner.first(ev.OutboundEdit, target_message_id=owner.ids[card.id])).text


async def test_a_strangers_click_changes_nothing(bus: tuple[Client, Owner]) -> None:
    nc, owner = bus
    requester = Requester(nc, "vault-stranger")
    await requester.ask(host="stranger.example.com")
    card = await owner.first(ev.OutboundMessage, text="stranger.example.com")
    await owner.press(card, "approve", who="local:mallory")
    refusal = await owner.first(ev.OutboundMessage, text="Sorry mallory")
    assert "Nothing was changed" in refusal.text and requester.decisions.empty()
    pending = await control(nc, "list", {"status": "pending"})
    assert "vault-stranger" in [p["id"] for p in pending]
    await owner.press(card, "deny")  # the owner still can
    assert (await requester.decision()).decided_by == OWNER


async def test_the_owner_decides_at_the_machine_when_no_chat_is_at_hand(up: Up, bus: tuple[Client, Owner]) -> None:
    nc, owner = bus
    requester = Requester(nc, "vault-cli")
    await requester.ask(host="cli.example.com")
    card = await owner.first(ev.OutboundMessage, text="cli.example.com")

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clawden", "approvals", *argv],
            capture_output=True,
            text=True,
            env=dict(os.environ, CLAWDEN_HOME=str(up.home)),
            timeout=30,
        )

    wrong = await asyncio.to_thread(cli, "answer", card.id, "maybe")
    assert wrong.returncode == 1 and "'maybe' is not one of its choices: 1) Approve, 2) Deny" in wrong.stderr
    done = await asyncio.to_thread(cli, "approve", "vault-cli")
    assert done.returncode == 0 and done.stdout.strip() == "vault-cli is approved", done.stderr
    assert (await requester.decision()).decided_by == OWNER
    edit = await owner.first(ev.OutboundEdit, target_message_id=owner.ids[card.id])
    assert f"Approved by {OWNER}" in edit.text and edit.card.buttons == ()
    again = await asyncio.to_thread(cli, "deny", "vault-cli")
    assert again.returncode == 1 and f"vault-cli is already approved by {OWNER}" in again.stderr


async def test_expiry_denies_and_edits_the_card(bus: tuple[Client, Owner]) -> None:
    nc, owner = bus
    requester = Requester(nc, "vault-expire")
    await requester.ask(ttl=3, host="expire.example.com")
    card = await owner.first(ev.OutboundMessage, text="expire.example.com")
    assert (await requester.decision()).decision == "expired"
    edit = await owner.first(ev.OutboundEdit, target_message_id=owner.ids[card.id])
    assert "Expired" in edit.text and edit.card.buttons == ()


async def restart_approvals(nc: Client) -> None:
    """Kill the approvals process of `clawden up` (a crash, a reboot) and wait for the one it starts again."""
    ping = json.loads((await nc.request(subjects.ctl("approvals", "ping"), b"", timeout=10)).data)
    os.kill(ping["pid"], signal.SIGKILL)

    async def back() -> bool:
        with contextlib.suppress(Exception):
            again = json.loads((await nc.request(subjects.ctl("approvals", "ping"), b"", timeout=0.5)).data)
            return bool(again["pid"] != ping["pid"] and again["ready"])
        return False

    await eventually(back, 60, "`clawden up` did not start the approvals service again")


async def test_a_new_senders_approval_survives_an_approvals_restart_and_its_held_messages_are_delivered(
    bus: tuple[Client, Owner],
) -> None:
    """The router holds a new sender's messages for days behind its approval; the approvals service restarting
    (an upgrade, a reboot) is no answer: the card stays open, the owner approves it after, and the messages go on."""
    nc, owner = bus
    chat = ev.Route(channel="telegram", chat_id="c-restart")
    await ask_on(
        nc,
        router_ctl.CHATS_CREATE,
        router_ctl.ChatCreate(channel=chat.channel, chat_id=chat.chat_id, policy="request_approval"),
        wait_for_service=True,
    )
    await ask_on(
        nc,
        router_ctl.WIRINGS_CREATE,
        router_ctl.WiringCreate(channel=chat.channel, chat_id=chat.chat_id, agent_group="main"),
    )
    woken: list[ev.Wake] = []

    async def on_wake(msg: Msg) -> None:
        wake = ev.decode(msg.data)
        if isinstance(wake, ev.Wake) and wake.route == chat:
            woken.append(wake)

    await nc.subscribe(f"{subjects.PREFIX}.wake.>", cb=on_wake)
    for n, text in enumerate(("first", "second")):
        line = ev.InboundMessage(
            route=chat, message_id=f"r{n}", sender=ev.Sender(id="telegram:newcomer"), text=text, sent_at=time.time()
        )
        await publish(nc.jetstream(), subjects.inbound("telegram"), line, msg_id=line.key)
    card = await owner.first(ev.OutboundMessage, text="telegram:newcomer")
    [held] = [a for a in await control(nc, "list", {"status": "pending"}) if a["kind"] == "sender"]

    await restart_approvals(nc)

    assert [a["id"] for a in await control(nc, "list", {"status": "pending"}) if a["kind"] == "sender"] == [held["id"]]
    await owner.press(card, "approve")
    await eventually(lambda: len(woken) >= 2, 30, lambda: f"woken: {woken}")
    assert [w.message.text for w in woken] == ["first", "second"]
    edit = await owner.first(ev.OutboundEdit, target_message_id=owner.ids[card.id])
    assert f"Approved by {OWNER}" in edit.text


# --- approvals alone (`clawden run approvals`): no router, and a service that stops and starts -----------


class ApprovalsProcess:
    """`clawden run approvals`, as its systemd unit runs it."""

    def __init__(self, home: Path, url: str) -> None:
        self.env = dict(os.environ, CLAWDEN_HOME=str(home), CLAWDEN_NATS_URL=url)
        self.log = home / "approvals.log"
        self.db = config.load(home).data_dir / "approvals.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", "approvals"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def start(self, nc: Client) -> None:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while True:  # ready: its consumers are bound and the clicks left from before are applied
            try:
                if json.loads((await nc.request(subjects.ctl("approvals", "ping"), b"", timeout=0.5)).data)["ready"]:
                    return
            except Exception:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(20) == 0, self.log.read_text()

    def kill(self) -> None:
        """A crash: what it held is handed back by nobody, and JetStream delivers it again only at its ack wait."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(20)


class Alone:
    def __init__(self, nc: Client, owner: Owner, approvals: ApprovalsProcess) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.owner = owner
        self.approvals = approvals
        self.telegram: list[ev.Event] = []  # what it sends to Telegram chats

    async def forward(self, action: ev.InboundAction) -> None:
        """A click, passed on as the router passes it on."""
        await publish(self.js, subjects.APPROVAL_CLICK, action, msg_id=f"click:{action.key}")

    async def telegram_card(self, chat_id: str, timeout: float = 20) -> ev.OutboundMessage:
        def found() -> ev.OutboundMessage | None:
            return next(
                (
                    e
                    for e in self.telegram
                    if isinstance(e, ev.OutboundMessage) and e.route.chat_id == chat_id and e.card is not None
                ),
                None,
            )

        card: ev.OutboundMessage = await eventually(found, timeout, lambda: f"no card in {chat_id}: {self.telegram}")
        return card

    async def stats(self) -> dict[str, int]:
        pong = json.loads((await self.nc.request(subjects.ctl("approvals", "ping"), b"", timeout=10)).data)
        counts: dict[str, int] = pong["stats"]["approvals"]
        return counts


@pytest.fixture
async def alone(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Alone]:
    home = tmp_path / "home"
    setup.init(home)
    nc = await connect(nats_server.url, "test")
    await ensure_streams(nc.jetstream())
    async with reading_as_owner(nc) as owner:
        approvals = ApprovalsProcess(home, nats_server.url)
        it = Alone(nc, owner, approvals)

        async def on_telegram(msg: Msg) -> None:
            it.telegram.append(ev.decode(msg.data))

        await nc.subscribe(subjects.outbound_all("telegram"), cb=on_telegram)
        await approvals.start(nc)
        yield it
        approvals.stop()
    await nc.close()


class Router:
    """The router's `approvers` verb, answered from the test: absent until `come`, like a router restarting."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.asked = 0
        self.groups: list[str] = []  # the agent group of each ask, in order

    async def come(self, refusal: str = "") -> None:
        """From now on it answers: the owner approves, or (`refusal`) the router's "400" with those words."""

        async def answer(msg: Msg) -> None:
            self.asked += 1
            group = msgspec.json.decode(msg.data, type=router_ctl.ApproversGet).agent_group
            self.groups.append(group)
            if refusal:
                errors = {"Nats-Service-Error": refusal, "Nats-Service-Error-Code": "400"}
                await self.nc.publish(msg.reply, b"", headers=errors)
                return
            reply = router_ctl.Approvers(agent_group=group, approvers=[OWNER])
            await msg.respond(msgspec.json.encode(reply))

        await self.nc.subscribe(router_ctl.APPROVERS.subject, cb=answer)


async def unanswered(alone: Alone) -> int:
    return (await alone.stats()).get("router_unanswered", 0)


async def test_a_request_waits_for_an_absent_router_and_is_decided_once_it_answers(alone: Alone) -> None:
    """No router (it is restarting): no answer is no decision. The request waits in approvals.db, its delivery acked,
    the router asked again and again, and is decided as usual once a router answers."""
    requester = Requester(alone.nc, "vault-norouter")
    await requester.ask(ttl=600)  # no approvers: the router is asked who may approve it

    async def asked_again() -> bool:
        return not requester.decisions.empty() or await unanswered(alone) >= 3

    await eventually(asked_again, 60, "the approvals service stopped asking the router")
    assert requester.decisions.empty(), f"decided while the router was away: {requester.decisions.get_nowait()}"
    waiting = await alone.js.consumer_info("CLAWDEN_APPROVALS", streams.approvals_requests().durable)
    assert (waiting.num_ack_pending, waiting.num_redelivered) == (0, 0)  # taken once, and holds no delivery

    router = Router(alone.nc)
    await router.come()
    card = await alone.owner.first(ev.OutboundMessage, text="api.github.com")
    assert router.asked >= 1
    await alone.forward(alone.owner.action(card, "approve"))
    decision = await requester.decision()
    assert (decision.decision, decision.decided_by) == ("approved", OWNER)


async def test_a_request_the_router_never_answers_about_expires_at_its_own_time(alone: Alone) -> None:
    """The request's own expiry ends the wait for an absent router: it expired, nobody denied it."""
    requester = Requester(alone.nc, "vault-norouter-expires")
    expires_at = await requester.ask(ttl=4)
    decision = await requester.decision(timeout=60)
    assert (decision.decision, decision.decided_by) == ("expired", "")
    assert "before the router said who may approve it" in decision.reason
    assert decision.decided_at >= expires_at


async def test_only_the_routers_own_refusal_denies_a_request(alone: Alone) -> None:
    await Router(alone.nc).come(refusal="bad request: no such field")
    requester = Requester(alone.nc, "vault-refused")
    await requester.ask(ttl=600)
    decision = await requester.decision()
    assert (decision.decision, decision.decided_by) == ("denied", "approvals")
    assert decision.reason == "the router refused to say who may approve it: bad request: no such field"


async def test_a_bridge_cannot_speak_for_another_channel(alone: Alone) -> None:
    """What arrives on `clawden.inbound.local` saying it is Telegram's is ignored: it neither becomes a
    Telegram user's direct chat (where their cards would go) nor moves a Telegram chat's question cards."""
    question = ev.ApprovalRequest(
        id="q-pizza",
        kind="question",
        requester="runner",
        agent_group="main",
        route=ev.Route(channel="telegram", chat_id="-41"),
        card=ev.Card(
            title="Pizza or pasta?", buttons=(ev.Button(id="1", label="Pizza"), ev.Button(id="2", label="Pasta"))
        ),
    )
    await publish(alone.js, subjects.APPROVAL_REQUEST, question, msg_id="runner:q-pizza")
    asked = await alone.telegram_card("-41")

    forged: list[ev.InboundMessage | ev.ChatMoved] = [
        ev.InboundMessage(
            route=ev.Route(channel="telegram", chat_id="666"),
            message_id="f1",
            sender=ev.Sender(id="telegram:111", name="owner"),
            text="hi",
            sent_at=time.time(),
        ),
        ev.ChatMoved(channel="telegram", old_chat_id="-41", new_chat_id="-666"),
    ]
    for event in forged:
        await publish(alone.js, subjects.inbound("local"), event, msg_id=event.key)

    async def all_read() -> bool:
        info = await alone.js.consumer_info("CLAWDEN_INBOUND", streams.approvals_inbound().durable)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(all_read, 20, "the approvals service never read its inbound")

    requester = Requester(alone.nc, "vault-forged")
    await requester.ask(approvers=("telegram:111",))
    await alone.telegram_card("111")  # the chat the handle names, not the forger's
    assert not any(e.route.chat_id == "666" for e in alone.telegram if isinstance(e, ev.OutboundMessage))

    from_the_forged_chat = ev.InboundAction(
        route=ev.Route(channel="telegram", chat_id="-666"),
        action_id="tg-a1",
        sender=ev.Sender(id="telegram:9", name="eve"),
        card_id=asked.id,
        button_id="2",
    )
    await alone.forward(from_the_forged_chat)
    await eventually(
        lambda: any(isinstance(e, ev.OutboundMessage) and e.text.startswith("Sorry eve") for e in alone.telegram),
        20,
        lambda: f"no refusal: {alone.telegram}",
    )
    pending = await control(alone.nc, "list", {"status": "pending"})
    assert "q-pizza" in [p["id"] for p in pending]
    assert (await alone.stats()).get("forged_channel") == 2


async def test_at_a_restart_a_click_counts_only_if_it_came_before_the_expiry(alone: Alone) -> None:
    """Clicks that came while the service was down are applied at its start, each judged by when it came:
    one in time decides, one after the expiry approves nothing (the card shows it expired)."""
    owner = alone.owner
    late, in_time = Requester(alone.nc, "vault-late"), Requester(alone.nc, "vault-in-time")
    late_expiry = await late.ask(ttl=3, host="late.example.com", approvers=(OWNER,))
    in_time_expiry = await in_time.ask(ttl=8, host="intime.example.com", approvers=(OWNER,))
    late_card = await owner.first(ev.OutboundMessage, text="late.example.com")
    in_time_card = await owner.first(ev.OutboundMessage, text="intime.example.com")
    await eventually(lambda: late_card.id in owner.ids and in_time_card.id in owner.ids)
    alone.approvals.stop()

    await alone.forward(owner.action(in_time_card, "approve"))
    assert time.time() < in_time_expiry, "the machine is too slow for this test's expiries"
    await asyncio.sleep(max(0.0, late_expiry - time.time()) + 0.2)
    await alone.forward(owner.action(late_card, "approve"))
    await asyncio.sleep(max(0.0, in_time_expiry - time.time()) + 0.2)  # both expired before the start
    await alone.approvals.start(alone.nc)

    assert (await in_time.decision()).decision == "approved"
    expired = await late.decision()
    assert (expired.decision, expired.reason) == ("expired", "nobody answered in time")
    assert "had expired before you pressed it" in (await owner.first(ev.OutboundMessage, text="Sorry")).text
    assert "Expired" in (await owner.first(ev.OutboundEdit, target_message_id=owner.ids[late_card.id])).text


async def test_a_start_expires_once_what_came_due_while_the_service_was_down_and_nothing_else(alone: Alone) -> None:
    """A request whose expiry passed during the downtime is expired at the start, once (one decision, one edit of
    its card); one whose time is not up stays open across the restart, and an approver decides it after."""
    owner = alone.owner
    due, lasting = Requester(alone.nc, "vault-due"), Requester(alone.nc, "vault-lasting")
    due_expiry = await due.ask(ttl=3, host="due.example.com", approvers=(OWNER,))
    await lasting.ask(ttl=600, host="lasting.example.com", approvers=(OWNER,))
    due_card = await owner.first(ev.OutboundMessage, text="due.example.com")
    lasting_card = await owner.first(ev.OutboundMessage, text="lasting.example.com")
    alone.approvals.stop()
    await asyncio.sleep(max(0.0, due_expiry - time.time()) + 0.2)  # its time runs out while nothing runs

    await alone.approvals.start(alone.nc)
    assert [a["id"] for a in await control(alone.nc, "list", {"status": "pending"})] == ["vault-lasting"]
    assert (await alone.stats()).get("expired_at_start") == 1
    expired = await due.decision()
    assert (expired.decision, expired.reason) == ("expired", "nobody answered in time")
    assert "Expired" in (await owner.first(ev.OutboundEdit, target_message_id=owner.ids[due_card.id])).text

    alone.approvals.stop()
    await alone.approvals.start(alone.nc)
    assert (await alone.stats()).get("expired_at_start", 0) == 0
    await alone.forward(owner.action(lasting_card, "approve"))
    assert (await lasting.decision()).decision == "approved"
    assert due.decisions.empty()  # its one decision, not told again by the second start
    shown = await control(alone.nc, "show", {"id": "vault-due"})
    assert [a["what"] for a in shown["audit"]].count("expired") == 1
    edits = [e for e in owner.seen if isinstance(e, ev.OutboundEdit) and e.target_message_id == owner.ids[due_card.id]]
    assert len(edits) == 1


async def test_a_request_waiting_for_the_router_is_listed_as_such(alone: Alone) -> None:
    """`clawden approvals list` shows a request the router has not yet said who approves, marked as waiting for it,
    and `show` the choices its owner has at the machine; once the router answers it is listed as any other, sent to
    its approver."""
    requester = Requester(alone.nc, "vault-routing")
    expires_at = await requester.ask(ttl=600)
    await eventually(lambda: unanswered(alone), 30, "the approvals service never asked the router")

    [waiting] = [a for a in await control(alone.nc, "list", {"status": "pending"}) if a["id"] == "vault-routing"]
    assert (waiting["status"], waiting["approver"], waiting["reason"]) == ("pending", "", "waiting for the router")
    assert (waiting["kind"], waiting["agent_group"], waiting["expires_at"]) == ("credential", "main", expires_at)
    assert "vault-routing" in [a["id"] for a in await control(alone.nc, "list", {})]
    assert "vault-routing" not in [a["id"] for a in await control(alone.nc, "list", {"status": "approved"})]
    shown = await ask_on(alone.nc, approvals_ctl.SHOW, approvals_ctl.ShowRequest(id="vault-routing"))
    assert (shown.reason, shown.approver, shown.card_id) == ("waiting for the router", "", "")  # no card sent
    assert shown.title == "Allow main to call api.github.com?" and "POST https://api.github.com/" in shown.body
    assert [b.label for b in shown.buttons] == ["Approve", "Deny"]

    await Router(alone.nc).come()
    await alone.owner.first(ev.OutboundMessage, text="api.github.com")
    [sent] = [a for a in await control(alone.nc, "list", {}) if a["id"] == "vault-routing"]
    assert (sent["status"], sent["approver"], sent["reason"]) == ("pending", OWNER, "")


async def test_a_copy_of_a_recorded_request_is_a_duplicate_without_asking_the_router(alone: Alone) -> None:
    """A request published again (a requester's retry whose first publish did land, under another key) is found
    recorded before anyone is asked: with the router away, it is not held for it until its expiry."""
    requester = Requester(alone.nc, "vault-copy")
    await requester.ask(ttl=600, approvers=(OWNER,))  # no router needed: recorded, its card sent
    await alone.owner.first(ev.OutboundMessage, text="api.github.com")
    [stored] = [e for e in await stored_requests(alone) if isinstance(e, ev.ApprovalRequest)]
    copy = msgspec.structs.replace(stored, approvers=())
    await publish(alone.js, subjects.APPROVAL_REQUEST, copy, msg_id="vault:vault-copy:again")
    await eventually(lambda: duplicates(alone), 30, "the copy was never taken for a duplicate")
    assert await unanswered(alone) == 0  # the (absent) router was never asked


async def stored_requests(alone: Alone) -> list[ev.Event]:
    sub = await alone.js.subscribe(subjects.APPROVAL_REQUEST, ordered_consumer=True)
    try:
        return [ev.decode((await sub.next_msg(timeout=5)).data)]
    finally:
        await sub.unsubscribe()


async def duplicates(alone: Alone) -> int:
    return (await alone.stats()).get("duplicate", 0)


def spoil(db: Path, approval_id: str, deciders: str) -> str:
    """Set a request's deciders as stored (what a click is checked against); the value it had."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        [(before,)] = conn.execute("SELECT deciders FROM approvals WHERE id = ?", (approval_id,)).fetchall()
        conn.execute("UPDATE approvals SET deciders = ? WHERE id = ?", (deciders, approval_id))
    return str(before)


async def test_a_click_that_keeps_failing_does_not_hold_the_start_and_is_retried_after_it(alone: Alone) -> None:
    """A click whose handling fails every time (its card's row cannot be read) is handled once at the start and left
    to come again: the start does not wait for JetStream to give up on it, the click after it is applied, what came
    due meanwhile expires, and once its row reads again the failing click is applied too."""
    owner = alone.owner
    stuck, good, due = (Requester(alone.nc, f"vault-{n}") for n in ("stuck", "good", "due-too"))
    await stuck.ask(ttl=600, host="stuck.example.com", approvers=(OWNER,))
    await good.ask(ttl=600, host="good.example.com", approvers=(OWNER,))
    due_expiry = await due.ask(ttl=3, host="duetoo.example.com", approvers=(OWNER,))
    stuck_card = await owner.first(ev.OutboundMessage, text="stuck.example.com")
    good_card = await owner.first(ev.OutboundMessage, text="good.example.com")
    await eventually(lambda: stuck_card.id in owner.ids and good_card.id in owner.ids)
    alone.approvals.stop()
    deciders = spoil(alone.approvals.db, "vault-stuck", "not json")

    await alone.forward(owner.action(stuck_card, "approve"))
    await alone.forward(owner.action(good_card, "approve"))
    await asyncio.sleep(max(0.0, due_expiry - time.time()) + 0.2)  # its time runs out while nothing runs
    await alone.approvals.start(alone.nc)  # ready within its 30 s, not after max_deliver's minutes

    assert (await good.decision()).decision == "approved"
    assert (await due.decision()).decision == "expired"
    assert stuck.decisions.empty()
    spoil(alone.approvals.db, "vault-stuck", deciders)
    decision = await stuck.decision(timeout=90)  # its next delivery, after a backoff
    assert (decision.decision, decision.decided_by) == ("approved", OWNER)


async def test_a_click_the_last_process_took_and_never_acked_is_applied_at_the_start_before_expiry(
    alone: Alone,
) -> None:
    """A click delivered to the process before and never acked (it died handling it) comes again: the start waits
    for it and applies it, judged by when it came, before it expires what came due."""
    owner = alone.owner
    requester = Requester(alone.nc, "vault-taken")
    expiry = await requester.ask(ttl=4, host="taken.example.com", approvers=(OWNER,))
    card = await owner.first(ev.OutboundMessage, text="taken.example.com")
    await eventually(lambda: card.id in owner.ids)
    alone.approvals.stop()
    await alone.forward(owner.action(card, "approve"))
    taker = await bind(alone.js, streams.approvals_clicks(), batch=1)  # the process that died with it
    [taken] = await eventually(lambda: taker.next(), 20, "the click never came")
    await taker.stop()
    await asyncio.sleep(max(0.0, expiry - time.time()) + 0.2)  # its request came due while nothing ran
    await taken.nak(delay=2.0)  # due again shortly after the start (as a dead process's is at its ack wait)
    await alone.approvals.start(alone.nc)

    decision = await requester.decision()
    assert (decision.decision, decision.decided_by) == ("approved", OWNER)
    assert (await alone.stats()).get("expired_at_start", 0) == 0


async def test_an_approval_applied_while_its_requester_was_away_is_shown_as_not_let_through_once_withdrawn(
    alone: Alone,
) -> None:
    """The owner approves while the vault is down: the press is applied and published, but nobody hears it. At its
    start the vault withdraws the ask: the card keeps who approved and says that nothing was let through, once."""
    owner = alone.owner
    requester = Requester(alone.nc, "vault-away")
    await requester.ask(host="away.example.com", approvers=(OWNER,))
    card = await owner.first(ev.OutboundMessage, text="away.example.com")
    await eventually(lambda: card.id in owner.ids)
    await alone.forward(owner.action(card, "approve"))
    assert (await requester.decision()).decision == "approved"
    approved = await owner.first(ev.OutboundEdit, target_message_id=owner.ids[card.id])
    assert f"Approved by {OWNER}" in approved.text and "stopped waiting" not in approved.text

    reason = "the vault restarted while it waited; the agent's request was dropped"
    withdrawn = ev.ApprovalWithdrawn(id="vault-away", requester="vault", reason=reason)
    await publish(alone.js, subjects.APPROVAL_REQUEST, withdrawn, msg_id="vault:withdrawn:vault-away")
    amended = await owner.first(ev.OutboundEdit, target_message_id=owner.ids[card.id], text="nothing was let through")
    assert amended.text.endswith(
        f"✅ Approved by {OWNER}\n↩️ But its requester had stopped waiting ({reason}): nothing was let through"
    )
    await publish(alone.js, subjects.APPROVAL_REQUEST, withdrawn, msg_id="vault:withdrawn:vault-away:again")
    counts = await eventually(lambda: _counted(alone, "withdraw_ignored"), 20)
    assert counts.get("withdrawn_after") == 1  # the second copy amended nothing more
    assert (await control(alone.nc, "show", {"id": "vault-away"}))["status"] == "approved"


async def _counted(alone: Alone, what: str) -> dict[str, int] | None:
    counts = await alone.stats()
    return counts if counts.get(what) else None
