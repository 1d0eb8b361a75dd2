"""One NATS identity per runner id (issue 25): `clawden runners add b` makes `runner-b`, whose grants name
runner b's subjects and durables only. The decisions are tables; the server's refusals are a real secured
nats-server running the config `clawden init` writes."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import natsauth, natsserver, setup
from clawden.bus import bind, ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import runner as runner_api
from clawden.bus.streams import runner_decisions, runner_receipts, runner_wake
from clawden.cli import doctor
from clawden.cli.commands import cluster, runners
from clawden.cli.main import main
from tests.eventually import eventually

# ---- the pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runner_id", "has_seed", "ident"),
    [
        ("local", False, "runner"),  # a single-host install: nothing changes
        ("a", False, "runner"),  # the install's own runner, whatever its id
        ("b", True, "runner-b"),  # another host's, its seed copied there
        ("host-b_1", True, "runner-host-b_1"),
    ],
)
def test_a_runner_is_runner_id_only_where_its_home_holds_that_seed(runner_id: str, has_seed: bool, ident: str) -> None:
    assert natsauth.choose_runner_identity(runner_id, has_seed) == ident


@pytest.mark.parametrize(
    ("ident", "runner_id"),
    [
        ("runner-b", "b"),
        ("runner-host-b_1", "host-b_1"),
        ("runner", None),  # the install's own
        ("router", None),
        ("channel-runner-b", None),
        ("runner-", None),
        ("runner-a.b", None),  # no subject token: never an identity
    ],
)
def test_an_added_runners_identity_names_its_id(ident: str, runner_id: str | None) -> None:
    assert natsauth.runner_id_of(ident) == runner_id


@pytest.mark.parametrize(
    ("runner_id", "problem"),
    [
        ("b", None),
        ("local", "this install's own runner"),
        ("c", "has an identity already"),
        ("a.b", "is no runner id"),
        ("", "is no runner id"),
        ("x" * 65, "is no runner id"),
        ("b>", "is no runner id"),
    ],
)
def test_which_runner_ids_may_be_added(runner_id: str, problem: str | None) -> None:
    said = runners.check_new(runner_id, "local", ("c",))
    assert said is None if problem is None else problem in str(said)


def _perms(table: dict[str, natsauth.Grant], ident: str) -> tuple[list[str], list[str]]:
    perms = natsauth.permissions(ident, table[ident])
    return perms["publish"]["allow"], perms["subscribe"]["allow"]


def _cfg(home: Path, runner_id: str) -> config_mod.Config:
    return config_mod.Config(home=str(home), runner=config_mod.RunnerConfig(id=runner_id))


def test_an_added_runner_is_granted_its_own_subjects_and_durables_only(tmp_path: Path) -> None:
    table = natsauth.grants(_cfg(tmp_path, "a"), (), ("b", "c"))
    publish_, subscribe = _perms(table, "runner-b")
    assert {c.durable for c in table["runner-b"].consumes} == {"runner-b", "runner-b-receipts", "runner-b-decisions"}
    assert runner_wake("b").filter_subject == "clawden.wake.b"
    assert f"$JS.API.CONSUMER.CREATE.CLAWDEN_WAKE.runner-b.{subjects.wake('b')}" in publish_
    assert [p for p in publish_ if p.startswith("clawden.runner.heartbeat.")] == [subjects.heartbeat("b")]
    others = ("runner-a", "runner-c", "runner-local", ".a.", ".c.")
    assert not [p for p in publish_ if any(o in p for o in others) or p.endswith((".a", ".c"))], publish_
    assert sorted(p for p in publish_ if "WAKE" in p.upper() and "STREAM" not in p) == [
        "$JS.ACK.CLAWDEN_WAKE.runner-b.>",
        "$JS.API.CONSUMER.CREATE.CLAWDEN_WAKE.runner-b.clawden.wake.b",
        "$JS.API.CONSUMER.INFO.CLAWDEN_WAKE.runner-b",
        "$JS.API.CONSUMER.MSG.NEXT.CLAWDEN_WAKE.runner-b",
    ]  # it never publishes a wake, and reads only its own
    assert "clawden.ctl.runner.b.*" in subscribe and "_INBOX_runner-b.>" in subscribe
    assert "clawden.ctl.runner.* q" in subscribe  # the shared subjects: in micro's queue group only
    assert not {"clawden.ctl.runner.*", "clawden.ctl.runner.>", "clawden.ctl.runner.*.*"} & set(subscribe)
    assert not [s for s in subscribe if ".runner.a." in s or ".runner.c." in s or "wake" in s]
    assert "$SRV.*.clawden-runner.*" in subscribe  # discovery finds every runner under one name


def test_an_added_runner_may_do_what_the_installs_own_runner_does_for_its_id(tmp_path: Path) -> None:
    """The exact verb grants carry over (16 router ops, the vault gateway, the scheduler): the two differ in
    nothing but the reply inbox."""
    added = _perms(natsauth.grants(_cfg(tmp_path, "a"), (), ("b",)), "runner-b")
    own = _perms(natsauth.grants(_cfg(tmp_path, "b"), ()), "runner")
    assert added[0] == own[0]
    assert [s for s in added[1] if "_INBOX" not in s] == [s for s in own[1] if "_INBOX" not in s]
    calls = {s for s in added[0] if s.startswith("clawden.ctl.router.")}
    assert calls == {v.subject for v in natsauth.RUNNER_CLI_VERBS if v.service == "router"} and len(calls) == 15


@pytest.fixture
def home_a(tmp_path: Path) -> config_mod.Config:
    """An install whose own runner is `a`, that added runner `b` with the CLI."""
    setup.init(tmp_path / "a")
    (tmp_path / "a" / "config.toml").write_text('install_id = "ga"\n[runner]\nid = "a"\n')
    assert main(["--home", str(tmp_path / "a"), "runners", "add", "b"]) == 0
    return config_mod.load(tmp_path / "a", environ={})


def _users(conf: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["nkey"]: u["permissions"] for u in conf["authorization"]["users"]}


def test_runners_add_writes_a_private_seed_and_the_identity_into_nats_conf_and_the_cluster_nodes(
    home_a: config_mod.Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = natsauth.seed_path(home_a, "runner-b")
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600 and natsauth.added_runners(home_a) == ("b",)
    capsys.readouterr()
    assert main(["--home", str(home_a.home_path), "runners", "add", "c"]) == 0
    out = capsys.readouterr().out
    assert "reload NATS" in out and "copy only runner-c.nk" in out and '[runner] id = "c"' in out
    assert natsauth.added_runners(home_a) == ("b", "c")
    key = natsauth.public_key(seed.read_text())
    wanted = natsauth.permissions("runner-b", natsauth.runner_grant("b"))
    assert _users(json.loads(natsauth.conf_path(home_a).read_text()))[key] == wanted
    nodes = cluster.plan([], 3, natsserver.free_port(), natsserver.free_port())
    for conf in cluster.write_cluster(home_a, nodes, tmp_path / "cluster", tls=False, store_root=tmp_path / "s"):
        assert _users(json.loads(conf.read_text()))[key] == wanted  # every node knows runner b

    assert main(["--home", str(home_a.home_path), "runners", "list"]) == 0
    listed = capsys.readouterr().out
    assert "a       runner    this install's own" in listed and f"runner-b  {seed}" in listed
    assert main(["--home", str(home_a.home_path), "runners", "add", "b"]) == 1  # kept, never replaced
    assert seed.read_text() and natsauth.public_key(seed.read_text()) == key
    assert main(["--home", str(home_a.home_path), "runners", "remove", "b"]) == 0
    assert not seed.exists() and key not in natsauth.conf_path(home_a).read_text()
    assert main(["--home", str(home_a.home_path), "runners", "remove", "b"]) == 1
    assert "no added runner 'b'" in capsys.readouterr().err


def _host_b(tmp_path: Path, cfg_a: config_mod.Config, seed: bool = True) -> config_mod.Config:
    """Runner b's host: its own home, `[runner] id = "b"`, and (as the README says) only its own seed."""
    home = tmp_path / "b"
    (home / "keys" / "nats").mkdir(parents=True)
    (home / "config.toml").write_text(f'install_id = "gb"\n[nats]\nurl = "{cfg_a.nats_url}"\n[runner]\nid = "b"\n')
    if seed:
        shutil.copy(natsauth.seed_path(cfg_a, "runner-b"), home / "keys" / "nats" / "runner-b.nk")
    return config_mod.load(home, environ={})


def test_the_runner_picks_its_identity_by_its_id_and_an_added_ones_seed_is_the_homes_file(
    home_a: config_mod.Config, tmp_path: Path
) -> None:
    host_b = _host_b(tmp_path, home_a)
    assert natsauth.bus_identity(home_a, "runner") == "runner"  # the install's own keeps its identity
    assert natsauth.bus_identity(host_b, "runner") == "runner-b"
    assert natsauth.bus_identity(_host_b(tmp_path / "x", home_a, seed=False), "runner") == "runner"
    assert natsauth.bus_identity(host_b, "router") == "router"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / natsauth.SEED_CREDENTIAL).write_text("SUtheunitsrunnernk\n")  # the unit loads runner.nk
    environ = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert natsauth.load_seed(host_b, "runner", environ) == natsauth.seed_path(home_a, "runner-b").read_text().strip()
    assert natsauth.load_seed(home_a, "runner", environ) == "SUtheunitsrunnernk"


@pytest.mark.parametrize(
    ("mode", "valid", "listed", "this_host", "status", "said"),
    [
        (0o600, True, True, False, "ok", "runner-b, seed"),
        (0o600, True, None, False, "ok", "runner-b, seed"),  # a cluster's nodes: no nats.conf here
        (0o600, True, False, False, "WARN", "nats.conf does not list runner-b"),
        (0o644, True, True, False, "FAIL", "others may act as runner b"),
        (0o640, True, True, True, "FAIL", "others may act as runner b"),
        (0o600, False, True, False, "FAIL", "holds no nkey seed"),
        (0o600, True, False, True, "ok", "this host's runner connects as runner-b"),
    ],
)
def test_doctor_judges_each_added_runners_seed(
    mode: int, valid: bool, listed: bool | None, this_host: bool, status: str, said: str
) -> None:
    seed = doctor.RunnerSeed("b", Path("/h/keys/nats/runner-b.nk"), mode, valid, listed, this_host)
    result = doctor.runner_seed_result(seed)
    assert (result.status, said in result.detail) == (status, True), result
    assert (result.fix == "") == (status == "ok")


async def test_doctor_has_a_row_per_added_runner(home_a: config_mod.Config) -> None:
    rows = {c.name: c for c in doctor.checks(home_a, {})}
    assert "runner b" in rows
    assert (await rows["runner b"].run(doctor.Probe(home_a, {}))).status == "ok"
    natsauth.seed_path(home_a, "runner-b").chmod(0o644)
    result = await rows["runner b"].run(doctor.Probe(home_a, {}))
    assert result.status == "FAIL" and "chmod 600" in result.fix


# ---- a real secured nats-server --------------------------------------------------------------------------


@pytest.fixture
def secured(home_a: config_mod.Config) -> Iterator[config_mod.Config]:
    cfg = msgspec.structs.replace(home_a, nats=msgspec.structs.replace(home_a.nats, port=natsserver.free_port()))
    natsauth.write_server_config(cfg, ())
    proc = natsserver.start(cfg.nats.port, cfg.data_dir / "nats", config_file=natsauth.conf_path(cfg))
    yield cfg
    proc.terminate()
    proc.wait(10)


class As:
    """A connection as one identity that keeps the server's permission errors."""

    def __init__(self, cfg: config_mod.Config, ident: str) -> None:
        self.cfg, self.ident, self.errors = cfg, ident, list[str]()
        self.nc: Client | None = None

    async def __aenter__(self) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        self.nc = await natsauth.connect_as(self.cfg, self.ident, error_cb=on_error)
        return self.nc

    async def __aexit__(self, *exc: object) -> None:
        assert self.nc is not None
        await self.nc.close()

    def refused(self, what: str) -> bool:
        return any(f'"{what}"' in e for e in self.errors)


def _wake(runner: str) -> ev.Wake:
    return ev.Wake(
        session_id=f"s-{runner}",
        agent_group="main",
        route=ev.Route(channel="local", chat_id="1"),
        message=ev.WakeMessage(id="m1", kind="chat", text=f"for {runner}", sender=ev.Sender(id="owner")),
    )


@pytest.fixture
async def wakes(secured: config_mod.Config) -> AsyncIterator[None]:
    """The streams, and one wake for each runner, as the router sends them."""
    async with As(secured, "router") as nc:
        js = nc.jetstream()
        await ensure_streams(js)
        for rid in ("a", "b"):
            await publish(js, subjects.wake(rid), _wake(rid), msg_id=f"w-{rid}")
    yield


@pytest.mark.nats
async def test_runner_b_reads_its_own_wakes_and_is_refused_runner_as(
    secured: config_mod.Config, tmp_path: Path, wakes: None
) -> None:
    host_b = _host_b(tmp_path, secured)
    b = As(host_b, "runner")  # as the runner process on b's host connects: by its id, with its seed only
    async with b as nc:
        js = nc.jetstream()
        puller = await bind(js, runner_wake("b"))
        [msg] = await puller.next(timeout=10)
        assert ev.decoder_for(ev.Wake).decode(msg.data).session_id == "s-b"
        await msg.ack()
        await puller.stop()
        for mine in (runner_receipts("b"), runner_decisions("b")):
            await (await bind(js, mine)).stop()
        for theirs in (
            runner_wake("a"),
            runner_receipts("a"),
            runner_decisions("a"),
            replace(runner_wake("b"), filter_subject=subjects.wake("a")),  # its own durable, aimed at a's wakes
        ):
            with pytest.raises(TimeoutError):
                await bind(js, theirs)
        await nc.publish(subjects.heartbeat("a"), b"{}")
        for subject in ("clawden.ctl.runner.a.containers", "clawden.ctl.runner.a.*", subjects.wake("a")):
            await nc.subscribe(subject)
        await nc.subscribe("clawden.ctl.runner.containers")  # the shared subject, outside the queue group
        await nc.flush()
        refused = [
            "$js.api.consumer.create.clawden_wake.runner-a.clawden.wake.a",
            "$js.api.consumer.create.clawden_wake.runner-b.clawden.wake.a",
            "$js.api.consumer.create.clawden_receipts.runner-a-receipts.clawden.receipt.>",
            "$js.api.consumer.create.clawden_approvals.runner-a-decisions.clawden.approval.decision.>",
            "clawden.runner.heartbeat.a",
            "clawden.ctl.runner.a.containers",
            "clawden.ctl.runner.a.*",
            "clawden.wake.a",
            "clawden.ctl.runner.containers",
        ]
        await eventually(lambda: all(b.refused(s) for s in refused), message=lambda: b.errors)
    async with As(secured, natsauth.CLI) as cli:
        info = await cli.jetstream().consumer_info("CLAWDEN_WAKE", "runner-b")
        assert info.num_pending == 0 and info.num_ack_pending == 0  # b's wake was read once and acked
        assert {c.name for c in await cli.jetstream().consumers_info("CLAWDEN_WAKE")} == {"runner-b"}


@pytest.mark.nats
async def test_runner_b_serves_its_own_subjects_and_the_shared_ones_in_the_queue_group(
    secured: config_mod.Config, tmp_path: Path
) -> None:
    b = As(_host_b(tmp_path, secured), "runner")

    async def answer(msg: Msg) -> None:
        await msg.respond(b"b:" + msg.subject.encode())

    async with b as nc, As(secured, natsauth.CLI) as cli:
        await nc.subscribe(runner_api.at_runner("b", "containers"), cb=answer)
        await nc.subscribe("clawden.ctl.runner.containers", queue=natsauth.SERVICE_QUEUE, cb=answer)
        await nc.publish(subjects.heartbeat("b"), b"{}")
        await nc.flush()
        for subject in (runner_api.at_runner("b", "containers"), "clawden.ctl.runner.containers"):
            assert (await cli.request(subject, b"{}", timeout=5)).data == b"b:" + subject.encode()
        assert b.errors == []


@pytest.mark.nats
async def test_the_installs_own_runner_is_refused_runner_bs_wakes(secured: config_mod.Config, wakes: None) -> None:
    a = As(secured, "runner")
    async with a as nc:
        js = nc.jetstream()
        puller = await bind(js, runner_wake("a"))
        [msg] = await puller.next(timeout=10)
        assert ev.decoder_for(ev.Wake).decode(msg.data).session_id == "s-a"
        await puller.stop()
        with pytest.raises(TimeoutError):
            await bind(js, runner_wake("b"))
        await nc.subscribe("clawden.ctl.runner.b.*")
        await nc.flush()
        await eventually(lambda: a.refused("clawden.ctl.runner.b.*"), message=lambda: a.errors)
    assert a.refused("$js.api.consumer.create.clawden_wake.runner-b.clawden.wake.b"), a.errors


@pytest.mark.nats
async def test_a_runner_reads_back_a_decision_given_and_never_a_requests_card(
    secured: config_mod.Config, wakes: None
) -> None:
    """What a runner that takes a session over may read of CLAWDEN_APPROVALS (Runner._last_decision): the last
    decision on a question's subject, by a direct get; never a request's card (another session's question, a
    credential approval), by a direct get or the stream API."""
    card = ev.Card(title="Question", body="which bank account?")
    async with As(secured, "approvals") as nc:
        decision = ev.ApprovalDecision(id="q-1", decision="answered", value="tea")
        await publish(nc.jetstream(), subjects.approval_decision("q-1"), decision, msg_id="d-q-1")
    runner = As(secured, "runner")
    async with runner as nc:
        js = nc.jetstream()
        request = ev.ApprovalRequest(id="q-2", kind="question", requester="runner", agent_group="main", card=card)
        await publish(js, subjects.APPROVAL_REQUEST, request, msg_id="r-q-2")
        got = await js.get_last_msg("CLAWDEN_APPROVALS", subjects.approval_decision("q-1"), direct=True)
        assert ev.decoder_for(ev.ApprovalDecision).decode(got.data or b"").value == "tea"
        await nc.publish(f"$JS.API.DIRECT.GET.CLAWDEN_APPROVALS.{subjects.APPROVAL_REQUEST}", b"")
        await nc.publish("$JS.API.STREAM.MSG.GET.CLAWDEN_APPROVALS", b'{"last_by_subj": "clawden.approval.request"}')
        await nc.flush()
        refused = [
            f"$js.api.direct.get.clawden_approvals.{subjects.APPROVAL_REQUEST}",
            "$js.api.stream.msg.get.clawden_approvals",
        ]
        await eventually(lambda: all(runner.refused(s) for s in refused), message=lambda: runner.errors)
