"""Per-service NATS identities against a real nats-server running the config `clawden init` writes."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.errors import AuthorizationError

from clawden import config as config_mod
from clawden import natsauth, natsserver, setup
from clawden.bus import bind, connect, ensure_streams, subjects
from clawden.bus import events as ev
from clawden.bus.sentlog import SentLog, Unavailable
from clawden.bus.streams import bridge_lanes, bridge_outbound, router_due, runner_wake
from clawden.registry import installed_channels
from tests.eventually import eventually

CHANNELS = ("telegram", "signal")

pytestmark = pytest.mark.nats  # every test here runs a secured nats-server, or its identities' seeds


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[config_mod.Config]:
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, port=natsserver.free_port()))
    natsauth.ensure_seed(cfg, natsauth.runner_identity("b"))  # a runner on another host (`clawden runners add b`)
    natsauth.write_server_config(cfg, CHANNELS)
    proc = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=natsauth.conf_path(cfg))
    yield cfg
    proc.terminate()
    proc.wait(10)


def test_the_server_has_each_write_on_disk_before_it_acknowledges_it(tmp_path: Path) -> None:
    """A power cut must not lose what a bridge already confirmed to its platform (the default syncs every 2 min)."""
    cfg = setup.init(tmp_path / "home")
    cfg = msgspec.structs.replace(cfg, nats=msgspec.structs.replace(cfg.nats, port=natsserver.free_port()))
    monitor = natsserver.free_port()
    conf = tmp_path / "nats.conf"  # the written config, with the server's monitoring port opened to read it back
    conf.write_text(json.dumps(natsauth.server_config(cfg, ()) | {"http": f"127.0.0.1:{monitor}"}))
    proc = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=conf)
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, whatever *_proxy says
        with direct.open(f"http://127.0.0.1:{monitor}/varz", timeout=10) as answer:
            varz = json.load(answer)
    finally:
        proc.terminate()
        proc.wait(10)
    assert varz["jetstream"]["config"]["sync_always"] is True


class Client_:
    """A connection as one identity that remembers the server's permission errors."""

    def __init__(self, cfg: config_mod.Config, ident: str) -> None:
        self.cfg, self.ident = cfg, ident
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def __aenter__(self) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())  # nats-py lowercases them anyway

        self.nc = await natsauth.connect_as(self.cfg, self.ident, error_cb=on_error)
        return self.nc

    async def __aexit__(self, *exc: object) -> None:
        assert self.nc is not None
        await self.nc.close()


@pytest.fixture
async def streams_ready(cfg: config_mod.Config) -> AsyncIterator[None]:
    async with Client_(cfg, "router") as nc:  # a core service makes the streams
        await ensure_streams(nc.jetstream())
    yield


def inbound(channel: str) -> bytes:
    return ev.encode(
        ev.InboundMessage(
            route=ev.Route(channel=channel, chat_id="1"),
            message_id="m1",
            sender=ev.Sender(id=f"{channel}:1", name="Ada"),
            text="hi",
            sent_at=0.0,
        )
    )


def _users(conf: Path) -> set[str]:
    """`<identity>.nk: <public key>` for every user of a nats.conf, by matching keys to the home's seeds."""
    keys = {natsauth.public_key(p.read_text()): p.name for p in conf.parent.glob("keys/nats/*.nk")}
    return {f"{keys[u['nkey']]}: {u['nkey']}" for u in json.loads(conf.read_text())["authorization"]["users"]}


async def messages(cfg: config_mod.Config, stream: str) -> int:
    async with Client_(cfg, natsauth.CLI) as nc:
        return (await nc.jetstream().stream_info(stream)).state.messages


async def test_a_bridge_may_publish_only_its_own_inbound_subject(cfg: config_mod.Config, streams_ready: None) -> None:
    bridge = Client_(cfg, "channel-telegram")
    async with bridge as nc:
        js = nc.jetstream()
        ack = await js.publish(subjects.inbound("telegram"), inbound("telegram"), timeout=5)
        assert ack.stream == "CLAWDEN_INBOUND"
        for subject in (
            subjects.inbound("signal"),
            subjects.wake("local"),
            subjects.outbound("telegram", "1"),
            subjects.APPROVAL_REQUEST,
        ):
            with pytest.raises(TimeoutError):  # the server drops it: no stream ever acknowledges
                await js.publish(subject, inbound("signal"), timeout=1)
        # The server reports each refusal asynchronously: wait until all four have come back.
        await eventually(
            lambda: len([e for e in bridge.errors if "permissions violation for publish" in e]) >= 4,
            message=lambda: bridge.errors,
        )
    refused = [e for e in bridge.errors if "permissions violation for publish" in e]
    assert len(refused) == 4, bridge.errors
    assert any('"clawden.inbound.signal"' in e for e in refused)
    assert any('"clawden.wake.local"' in e for e in refused)
    assert await messages(cfg, "CLAWDEN_INBOUND") == 1
    assert await messages(cfg, "CLAWDEN_WAKE") == 0


async def test_a_bridge_reads_its_own_outbound_lanes_and_no_other_durable(
    cfg: config_mod.Config, streams_ready: None
) -> None:
    bridge = Client_(cfg, "channel-telegram")
    async with bridge as nc:
        js = nc.jetstream()
        for lane in bridge_lanes("telegram"):  # create, then pull from each of its own durables
            puller = await bind(js, lane)
            assert await puller.next(timeout=0.2) == []
            await puller.stop()
        with pytest.raises(TimeoutError):
            await bind(js, bridge_outbound("signal", 0))
        with pytest.raises(TimeoutError):
            await bind(js, runner_wake("local"))
        elsewhere = replace(bridge_outbound("telegram", 0), filter_subject=subjects.outbound_lane("telegram", 1))
        with pytest.raises(TimeoutError):  # a lane's durable, made to read another lane's subject
            await bind(js, elsewhere)
    assert any("consumer.create.clawden_outbound.channel-signal-0" in e for e in bridge.errors), bridge.errors
    assert any(
        "consumer.create.clawden_outbound.channel-telegram-0.clawden.outbound.telegram.1" in e for e in bridge.errors
    ), bridge.errors


async def test_every_publisher_of_replies_may_publish_to_a_chats_lane(
    cfg: config_mod.Config, streams_ready: None
) -> None:
    route = ev.Route(channel="telegram", chat_id="1")
    for ident in ("router", "runner", "runner-b", "scheduler", "approvals"):
        async with Client_(cfg, ident) as nc:
            reply = ev.OutboundMessage(id=f"from-{ident}", route=route, text="hi")
            ack = await nc.jetstream().publish(
                subjects.outbound("telegram", route.chat_id), ev.encode(reply), timeout=5
            )
            assert ack.stream == "CLAWDEN_OUTBOUND"
    assert await messages(cfg, "CLAWDEN_OUTBOUND") == 5


async def test_a_bridge_may_not_reshape_streams_or_read_another_identitys_replies(
    cfg: config_mod.Config, streams_ready: None
) -> None:
    bridge = Client_(cfg, "channel-telegram")
    async with bridge as nc:
        config = json.dumps({"name": "CLAWDEN_INBOUND", "subjects": ["clawden.inbound.>"], "max_age": 1})
        with pytest.raises(TimeoutError):
            await nc.request("$JS.API.STREAM.UPDATE.CLAWDEN_INBOUND", config.encode(), timeout=1)
        await nc.subscribe("_INBOX_router.>")
        await nc.subscribe("clawden.ctl.vault.>")
        await eventually(
            lambda: sum("_inbox_router.>" in e or "clawden.ctl.vault.>" in e for e in bridge.errors) >= 2,
            message=lambda: bridge.errors,
        )
    assert any("permissions violation for publish" in e and "stream.update" in e for e in bridge.errors)
    assert any('subscription to "_inbox_router.>"' in e for e in bridge.errors), bridge.errors
    assert any('subscription to "clawden.ctl.vault.>"' in e for e in bridge.errors), bridge.errors


async def test_nobody_gets_in_without_a_known_key_and_a_refused_service_stops_trying(cfg: config_mod.Config) -> None:
    stranger = natsauth.new_seed()  # a well-formed key the server does not list
    seeds: list[dict[str, Any]] = [{}, {"nkeys_seed_str": stranger}]
    for options in seeds:
        # reconnect-forever waits for a server that is not up yet, but not for one that said no
        with pytest.raises(AuthorizationError):
            await asyncio.wait_for(connect(cfg.nats_url, "stranger", **options), 10)


def test_seeds_are_private_and_each_identity_has_its_own(cfg: config_mod.Config) -> None:
    folder = natsauth.seed_dir(cfg)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    seeds = {p.stem: p.read_text().strip() for p in folder.glob("*.nk")}
    # Every installed bridge gets one at init, and so does each configured one (signal: this test's).
    bridges = {f"channel-{name}" for name in [*installed_channels(), *CHANNELS]}
    core = {"cli", "router", "runner", "vault", "scheduler", "approvals", "webhooks", "web"}
    assert set(seeds) == {*core, "runner-b", *bridges}  # runner-b: an added runner's, kept like the others'
    assert f"runner-b.nk: {natsauth.public_key(seeds['runner-b'])}" in _users(natsauth.conf_path(cfg))
    assert {"channel-telegram", "channel-signal"} <= bridges
    assert len(set(seeds.values())) == len(seeds)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.glob("*.nk"))
    assert stat.S_IMODE(natsauth.conf_path(cfg).stat().st_mode) == 0o600
    conf = natsauth.conf_path(cfg).read_text()
    assert all(seed not in conf for seed in seeds.values())  # public keys only
    assert setup.init(cfg.home_path) and seeds == {p.stem: p.read_text().strip() for p in folder.glob("*.nk")}


def test_a_seed_comes_from_the_systemd_credential_first_and_a_loose_one_is_refused(
    cfg: config_mod.Config, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / natsauth.SEED_CREDENTIAL).write_text("SUfromsystemd\n")
    assert natsauth.load_seed(cfg, "router", {"CREDENTIALS_DIRECTORY": str(creds)}) == "SUfromsystemd"
    path = natsauth.seed_path(cfg, "router")
    assert natsauth.load_seed(cfg, "router", {}) == path.read_text().strip()
    os.chmod(path, 0o644)
    with pytest.raises(natsauth.IdentityError, match="chmod 600"):
        natsauth.load_seed(cfg, "router", {})
    assert natsauth.load_seed(cfg, "channel-unknown", {}) is None


async def test_the_webhook_front_door_may_publish_only_its_routes_subjects(
    cfg: config_mod.Config, streams_ready: None
) -> None:
    door = Client_(cfg, "webhooks")
    async with door as nc:
        js = nc.jetstream()
        ack = await js.publish(subjects.webhook("whatsapp"), b"{}", timeout=5)
        assert ack.stream == "CLAWDEN_WEBHOOKS"
        for subject in (subjects.webhook("telegram"), subjects.inbound("whatsapp"), subjects.receipt("whatsapp")):
            with pytest.raises(TimeoutError):  # dropped by the server: no stream acknowledges it
                await js.publish(subject, b"{}", timeout=1)
        await eventually(
            lambda: len([e for e in door.errors if "permissions violation for publish" in e]) >= 3,
            message=lambda: door.errors,
        )
    assert await messages(cfg, "CLAWDEN_WEBHOOKS") == 1
    assert await messages(cfg, "CLAWDEN_INBOUND") == 0


async def test_the_scheduler_hands_due_runs_to_the_router_and_wakes_nobody_itself(
    cfg: config_mod.Config, streams_ready: None
) -> None:
    due = ev.TaskDue(
        id="task:t-1:2026-01-05T07:00:00Z",
        task_id="t-1",
        session_id="s-1",
        agent_group="main",
        route=ev.Route(channel="telegram", chat_id="1"),
        text="stretch",
        at=0.0,
    )
    scheduler = Client_(cfg, "scheduler")
    async with scheduler as nc:
        js = nc.jetstream()
        assert (await js.publish(subjects.TASK_DUE, ev.encode(due), timeout=5)).stream == "CLAWDEN_TASKS"
        with pytest.raises(TimeoutError):  # a wake: only the router knows where the session is
            await js.publish(subjects.wake("local"), ev.encode(due), timeout=1)
        with pytest.raises(TimeoutError):  # nor does it read placements any more
            await nc.request(f"$JS.API.DIRECT.GET.CLAWDEN_PLACEMENT.{subjects.placement('s-1')}", b"", timeout=1)
        await eventually(lambda: len(scheduler.errors) >= 2, message=lambda: scheduler.errors)
    assert any('"clawden.wake.local"' in e for e in scheduler.errors), scheduler.errors
    assert any("direct.get.clawden_placement" in e for e in scheduler.errors), scheduler.errors
    runner = Client_(cfg, "runner")
    async with runner as nc:  # an agent's runner may ask for tasks, never fire one into any session
        with pytest.raises(TimeoutError):
            await nc.jetstream().publish(subjects.TASK_DUE, ev.encode(due), timeout=1)
        await eventually(lambda: runner.errors, message=lambda: runner.errors)
    assert any(f'"{subjects.TASK_DUE}"' in e for e in runner.errors), runner.errors
    async with Client_(cfg, "router") as nc:  # the router reads them on its own durable
        puller = await bind(nc.jetstream(), router_due())
        try:
            [msg] = await puller.next(timeout=5)
            assert ev.decode(msg.data) == due
        finally:
            await puller.stop()
    assert await messages(cfg, "CLAWDEN_WAKE") == 0


async def test_a_bridge_writes_and_reads_its_own_channels_shared_sent_log_and_no_other(
    cfg: config_mod.Config, streams_ready: None
) -> None:
    async with Client_(cfg, natsauth.CLI) as nc:  # a record of another channel's bridge
        assert await SentLog(nc.jetstream(), "signal", "s").claim("o1", 0, "text", dedupe_window=0) is None
    bridge = Client_(cfg, "channel-telegram")
    async with bridge as nc:
        js = nc.jetstream(timeout=1)
        own = SentLog(js, "telegram", "a", timeout=1)
        assert await own.claim("o1", 0, "text", dedupe_window=0) is None
        found = await own.read("o1", 0)
        assert found is not None and found.record is not None and found.record.by == "a"
        theirs = SentLog(js, "signal", "a", timeout=1)
        with pytest.raises(Unavailable):  # the server drops the request: nothing ever answers
            await theirs.read("o1", 0)
        with pytest.raises(Unavailable):
            await theirs.record("o1", 0, "sent", platform_id="forged")
        await eventually(
            lambda: len([e for e in bridge.errors if "permissions violation for publish" in e]) >= 2,
            message=lambda: bridge.errors,
        )
    assert any("direct.get.clawden_sent.clawden.sent.signal." in e for e in bridge.errors), bridge.errors
    assert any('to "clawden.sent.signal.' in e for e in bridge.errors), bridge.errors
    assert await messages(cfg, "CLAWDEN_SENT") == 2


async def test_a_bridge_tells_only_its_own_twins_that_typing_is_over(cfg: config_mod.Config) -> None:
    notice = ev.encode(ev.TypingOff(route=ev.Route(channel="telegram", chat_id="1"), seq=7))
    bridge, twin = Client_(cfg, "channel-telegram"), Client_(cfg, "channel-telegram")
    async with bridge as nc, twin as other:
        heard = await other.subscribe(subjects.typing_off("telegram"))
        await other.flush()
        await nc.publish(subjects.typing_off("telegram"), notice)
        assert (await heard.next_msg(timeout=5)).data == notice
        await nc.publish(subjects.typing_off("signal"), notice)  # another bridge's twins: dropped by the server
        await nc.subscribe(subjects.typing_off("signal"))  # nor may it listen to theirs
        await eventually(
            lambda: (
                any("publish" in e and "typing_off" in e for e in bridge.errors)
                and any("subscription" in e and "typing_off" in e for e in bridge.errors)
            ),
            message=lambda: bridge.errors,
        )
