"""Runners on several hosts (issue 25, item 2), as two runner processes on one machine: separate homes,
install ids and runner ids, one NATS, one Docker engine (the install label keeps their containers apart). The
NATS is the first install's secured embedded server: runner b connects with the `runner-b` identity that
`clawden runners add b` made there.
Both heartbeat, `clawden status` shows one block per runner with its sessions, and the control API reaches
each runner at its own subject. The pure parts (the heartbeat's figures, finding each runner's subject,
merging their answers, the status block, the runner's grants) are tables."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import msgspec
import msgspec.inspect
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden import config, control, natsauth, setup, survey
from clawden.bus import ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import router as router_api
from clawden.bus.ctl import runner as runner_api
from clawden.cli.main import main as cli_main
from clawden.cli.status import gather, render, render_runner
from clawden.survey import merge_runners
from services.runner import heartbeat
from services.runner.containers import LABEL_INSTALL, LABEL_SESSION
from tests.e2e.harness import Stack, Terminal, start_stack
from tests.eventually import eventually

# ---- the pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meminfo", "available"),
    [
        ("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n", 8_000_000 * 1024),
        ("MemAvailable: 12\n", 12),  # no unit: bytes
        ("MemTotal: 5 kB\n", -1),  # an old kernel: unknown
        ("MemAvailable: lots kB\n", -1),
        ("", -1),
    ],
)
def test_available_memory_is_read_from_meminfo(meminfo: str, available: int) -> None:
    assert heartbeat.mem_available(meminfo) == available


@pytest.mark.parametrize(("slots", "running", "free"), [(8, 3, 5), (8, 8, 0), (2, 5, 0), (0, 0, 0)])
def test_free_slots_are_what_is_left_and_never_below_zero(slots: int, running: int, free: int) -> None:
    hb = heartbeat.beat("a", at=1.0, slots=slots, running=running, queued=1, cpus=4, load=0.123, memory=7)
    assert (hb.free, hb.slots, hb.running, hb.queued, hb.load, hb.every) == (free, slots, running, 1, 0.12, 5.0)
    assert ev.decode(ev.encode(hb)) == hb  # a typed event on the bus like any other


@pytest.mark.parametrize(("dead_after", "every"), [(15.0, 5.0), (60.0, 5.0), (3.0, 1.0)])
def test_a_runner_beats_three_times_within_dead_after_and_at_least_every_five_seconds(
    dead_after: float, every: float
) -> None:
    assert heartbeat.interval(dead_after) == every


def test_a_heartbeat_from_a_runner_whose_id_is_no_subject_token_is_refused() -> None:
    good = heartbeat.beat("a", at=1, slots=1, running=0, queued=0, cpus=1, load=0, memory=1)
    bad = msgspec.json.encode({**msgspec.to_builtins(good), "runner": "a.b"})
    with pytest.raises(msgspec.ValidationError, match=r"\$\.runner"):
        ev.decode(bad)


def _info(*subjects_: str) -> dict[str, Any]:
    return {"name": "clawden-runner", "endpoints": [{"name": s.rsplit(".", 1)[1], "subject": s} for s in subjects_]}


@pytest.mark.parametrize(
    ("infos", "found"),
    [
        # each runner announces the shared subjects and its own: only its own name it
        (
            [
                _info(
                    "clawden.ctl.runner.containers", "clawden.ctl.runner.a.containers", "clawden.ctl.runner.a.restart"
                ),
                _info("clawden.ctl.runner.containers", "clawden.ctl.runner.b.containers"),
            ],
            {"a": "clawden.ctl.runner.a.containers", "b": "clawden.ctl.runner.b.containers"},
        ),
        ([_info("clawden.ctl.runner.containers", "clawden.ctl.runner.ping")], {}),  # an older runner: none
        ([_info("clawden.ctl.router.a.containers", "clawden.ctl.runner.x.y.containers")], {}),  # not a runner's
        ([{"name": "clawden-runner"}, {"endpoints": None}], {}),  # nothing announced
    ],
)
def test_each_runner_is_found_by_the_subject_it_announces(infos: list[dict[str, Any]], found: dict[str, str]) -> None:
    assert control.own_subjects(infos, runner_api.CONTAINERS) == found


def _box(rid: str, *sessions: str, waiting: tuple[str, ...] = (), most: int = 8) -> dict[str, Any]:
    running = [
        {
            "session_id": s,
            "agent_group": "main",
            "container": f"c-{s}",
            "state": "running",
            "idle": 3.0,
            "mcp_failed": {},
        }
        for s in sessions
    ]
    queued = [{"session_id": s, "agent_group": "main", "waiting": 2.0} for s in waiting]
    return {"runner": rid, "max": most, "running": running, "waiting": queued}


def test_the_runners_answers_merge_with_each_session_naming_its_runner() -> None:
    merged = merge_runners({"a": _box("a", "s1"), "b": _box("b", "s2", waiting=("s3",), most=4)})
    assert merged["runner"] == "a, b" and merged["max"] == 12
    assert [(c["session_id"], c["runner"]) for c in merged["running"]] == [("s1", "a"), ("s2", "b")]
    assert [(w["session_id"], w["runner"]) for w in merged["waiting"]] == [("s3", "b")]
    assert [r["runner"] for r in merged["runners"]] == ["a", "b"]


def test_a_runner_that_did_not_answer_is_named_and_the_others_still_show() -> None:
    merged = merge_runners({"a": _box("a", "s1"), "b": control.NoAnswer("the runner service did not answer")})
    assert [c["session_id"] for c in merged["running"]] == ["s1"]
    assert merged["runners"][1] == {"runner": "b", "error": "the runner service did not answer"}
    assert render_runner(merged["runners"][1]) == ["containers (runner b): unknown (the runner service did not answer)"]

    none = merge_runners({"a": control.NoAnswer("down"), "b": control.NoAnswer("late")})
    assert none["error"] == "runner a: down; runner b: late"
    assert merge_runners({})["error"] == "no runner answered"


def test_status_shows_one_block_per_runner_with_its_sessions() -> None:
    lines = "\n".join(render_runner(_box("a", "s1")) + render_runner(_box("b", "s2", waiting=("s3",), most=4)))
    a, b = lines.split("containers (runner b)")
    assert a.startswith("containers (runner a): 1 of 8 running\n") and "s1" in a and "s2" not in a
    assert b.startswith(": 1 of 4 running, 1 waiting for a slot\n") and "s2" in b and "s3" in b and "s1" not in b


@pytest.mark.parametrize(
    ("host", "line"),
    [
        ({"cpus": 4, "load": 0.523, "memory_available": 3 * 2**30}, "; host: load 0.52 on 4 CPUs, 3.0 GiB available"),
        ({"cpus": 2, "load": 1.0, "memory_available": -1}, "; host: load 1.00 on 2 CPUs"),  # memory unknown
        ({}, ""),  # an older runner says nothing of its host
    ],
)
def test_a_runners_block_says_how_busy_its_host_is(host: dict[str, Any], line: str) -> None:
    assert render_runner({**_box("a"), **host})[0] == "containers (runner a): 0 of 8 running" + line


def test_a_runner_may_publish_only_its_own_heartbeat_and_serve_only_its_own_subjects(tmp_path: Path) -> None:
    setup.init(tmp_path / "home")
    (tmp_path / "home" / "config.toml").write_text('install_id = "g1"\n[runner]\nid = "a"\n')
    cfg = config.load(tmp_path / "home", environ={})
    perms = natsauth.permissions("runner", natsauth.grants(cfg, ())["runner"])
    publish, subscribe = perms["publish"]["allow"], perms["subscribe"]["allow"]
    assert subjects.heartbeat("a") in publish
    assert not any(p.startswith("clawden.runner.heartbeat.") and p != subjects.heartbeat("a") for p in publish)
    assert "clawden.ctl.runner.a.*" in subscribe and "clawden.ctl.runner.* q" in subscribe  # shared: queue group only
    assert not any(
        s in subscribe
        for s in ("clawden.ctl.runner.*", "clawden.ctl.runner.>", "clawden.ctl.runner.*.*", "clawden.ctl.runner.b.*")
    )
    web = natsauth.permissions("web", natsauth.grants(cfg, ())["web"])["publish"]["allow"]
    assert "clawden.ctl.runner.*.containers" in web and "$SRV.INFO.clawden-runner" in web
    assert not any(p.startswith("clawden.ctl.runner.") and p.endswith(".restart") for p in web)


# ---- two runner processes --------------------------------------------------------------------------------


class SecondRunner:
    """`clawden run runner` from a home of its own (another install id, runner id "b"), on the stack's NATS
    and Docker engine, using the stack's vault: another host's runner, as far as one machine can play it.
    `seed`: the identity `clawden runners add b` made on the first install, copied here as the README says
    (None on an open server)."""

    def __init__(
        self, home: Path, nats_url: str, seed: Path | None = None, *, nats: str = "", runner: str = ""
    ) -> None:
        """`nats`: the `[nats]` lines instead of `url = nats_url` (a cluster's); `runner`: more `[runner]` lines."""
        setup.init(home)
        self.home = home
        self.install_id = f"t{secrets.token_hex(4)}"
        nats = nats or f'url = "{nats_url}"'
        (home / "config.toml").write_text(
            f'install_id = "{self.install_id}"\n[nats]\n{nats}\n[runner]\nid = "b"\n{runner}\n'
        )
        if seed is not None:
            shutil.copy(seed, home / "keys" / "nats" / seed.name)
        self.log = home / "runner.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clawden", "run", "runner"],
                env=dict(os.environ, CLAWDEN_HOME=str(home)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        client = docker.from_env()
        try:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL_INSTALL}={self.install_id}"}):
                c.remove(force=True)
        finally:
            client.close()


@pytest.fixture
def two_runners(
    tmp_path: Path, docker_client: docker.DockerClient, agent_image: str
) -> Iterator[tuple[Stack, SecondRunner]]:
    """On the first install's embedded server, which lets nobody in without a key it lists: runner a as the
    install's own `runner`, runner b as `runner-b`, added before `clawden up` reads the identities."""
    home = tmp_path / "host-a"
    setup.init(home)
    assert cli_main(["--home", str(home), "runners", "add", "b"]) == 0
    stack = start_stack(home, runner='id = "a"')
    second = SecondRunner(tmp_path / "host-b", stack.nats_url, natsauth.seed_path(config.load(home), "runner-b"))
    yield stack, second
    second.close()
    stack.stop()


@pytest.fixture
async def beats(two_runners: tuple[Stack, SecondRunner]) -> AsyncIterator[dict[str, list[ev.RunnerHeartbeat]]]:
    """Every heartbeat seen, by runner."""
    seen: dict[str, list[ev.RunnerHeartbeat]] = {}
    nc = await two_runners[0].connect()

    async def on(msg: Msg) -> None:
        hb = ev.decoder_for(ev.RunnerHeartbeat).decode(msg.data)
        assert msg.subject == subjects.heartbeat(hb.runner)
        seen.setdefault(hb.runner, []).append(hb)

    await nc.subscribe(subjects.ALL_HEARTBEATS, cb=on)
    yield seen
    await nc.close()


async def wake_on_b(nc: Client, session_id: str, chat_id: str) -> None:
    """What the router sends runner b for a session it placed there."""
    js = nc.jetstream()
    await ensure_streams(js)
    wake = ev.Wake(
        session_id=session_id,
        agent_group="main",
        route=ev.Route(channel="local", chat_id=chat_id),
        message=ev.WakeMessage(id="m1", kind="chat", text="hello from host b", sender=ev.Sender(id="owner")),
    )
    await publish(js, subjects.wake("b"), wake, msg_id=wake.key)


def installs_of(session_ids: set[str]) -> dict[str, str]:
    """session -> the install label of its container, for every container Docker runs for these sessions."""
    client = docker.from_env()
    try:
        return {
            c.labels[LABEL_SESSION]: c.labels[LABEL_INSTALL]
            for c in client.containers.list(filters={"label": LABEL_SESSION})
            if c.labels.get(LABEL_SESSION) in session_ids
        }
    finally:
        client.close()


@pytest.mark.docker
@pytest.mark.nats
@pytest.mark.process
async def test_two_runners_both_beat_both_show_in_status_and_both_answer_the_control_api(
    two_runners: tuple[Stack, SecondRunner], beats: dict[str, list[ev.RunnerHeartbeat]]
) -> None:
    stack, second = two_runners
    nc = await stack.connect()
    try:
        # The router places new sessions by load (tests/cluster/test_placement.py): pinned, chat-a's goes to a.
        pin = router_api.GroupUpdate(name="main", runner="a")
        await control.ask(config.load(stack.home), router_api.GROUPS_UPDATE, pin)
        async with Terminal(stack, "chat-a") as term_a, Terminal(stack, "chat-b") as term_b:
            on_a = await term_a.ask("hello from host a", timeout=120)
            await eventually(lambda: "b" in beats, 60, lambda: second.log.read_text())
            assert f"as runner-b (seed: {second.home / 'keys' / 'nats' / 'runner-b.nk'})" in second.log.read_text()
            await wake_on_b(nc, "sess-on-b", "chat-b")
            on_b = await term_b.reply(timeout=120)
        assert on_b.session_id == "sess-on-b" and on_a.session_id != on_b.session_id

        await eventually(lambda: {"a", "b"} <= set(beats), 30, lambda: beats)
        for rid, mine in beats.items():
            assert all(hb.runner == rid and hb.slots == 8 and hb.cpus >= 1 for hb in mine)
        assert installs_of({on_a.session_id, on_b.session_id}) == {
            on_a.session_id: stack.install_id,
            on_b.session_id: second.install_id,
        }  # each runner's container under its own install's label

        report = await gather(config.load(stack.home))
        box = report["containers"]
        by_runner = {r["runner"]: {c["session_id"] for c in r["running"]} for r in box["runners"]}
        assert all(r["cpus"] >= 1 and r["memory_available"] > 0 for r in box["runners"]), box
        assert by_runner == {"a": {on_a.session_id}, "b": {"sess-on-b"}}, box
        text = render(report)
        assert "containers (runner a): 1 of 8 running" in text and "containers (runner b): 1 of 8 running" in text
        assert text.index(on_a.session_id) < text.index("(runner b)") < text.index("sess-on-b")
        assert text.count(" CPUs, ") == 2  # each block says how busy its host is

        answers = await control.ask_all(nc, runner_api.CONTAINERS, Nothing())
        assert set(answers) == {"a", "b"}
        # `clawden groups restart` reaches every runner: the group's sessions are on both
        restart = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clawden", "groups", "restart", "main"],
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (restart.returncode, restart.stderr) == (0, ""), restart
        assert "agent group main: 2 container(s) stopped" in restart.stdout
        await eventually(lambda: not installs_of({on_a.session_id, on_b.session_id}), 60, "both containers stopped")
    finally:
        await nc.close()


@pytest.mark.docker
@pytest.mark.nats
@pytest.mark.process
async def test_on_a_secured_bus_the_web_identity_sees_every_runners_sessions_and_restarts_none(
    tmp_path: Path, docker_client: docker.DockerClient, agent_image: str
) -> None:
    stack = start_stack(tmp_path / "home", runner='id = "a"')  # the embedded server, with every identity's grants
    try:
        async with Terminal(stack, "chat-web") as term:
            session = (await term.ask("hello", timeout=120)).session_id
        cfg = config.load(stack.home)
        web = await natsauth.connect_as(cfg, "web")  # its own seed: the server holds it to the web's grants
        try:
            report = await survey.report(web, cfg)  # what the web status page shows, asked as the web service
            [runner] = report["containers"]["runners"]
            assert runner["runner"] == "a" and [c["session_id"] for c in runner["running"]] == [session], report
            refused = await control.ask_all(web, runner_api.RESTART, runner_api.Restart(agent_group="main"), timeout=2)
            assert set(refused) == {"a"} and isinstance(refused["a"], control.NoAnswer)  # the server drops it
        finally:
            await web.close()
        assert [c.labels[LABEL_SESSION] for c in stack.containers()] == [session]  # still running
    finally:
        stack.stop()


@pytest.mark.parametrize("rid", ["a.b", "", "x" * 65, "a b", "a>"])
def test_a_runner_id_that_cannot_name_its_subjects_is_a_clear_config_error(tmp_path: Path, rid: str) -> None:
    (tmp_path / "config.toml").write_text(f'[runner]\nid = "{rid}"\n')
    with pytest.raises(config.ConfigError, match=r"runner\.id"):
        config.load(tmp_path, {})


def test_a_runner_id_is_a_subject_token(tmp_path: Path) -> None:
    kind = msgspec.inspect.type_info(config.RunnerId)
    assert isinstance(kind, msgspec.inspect.StrType) and kind.pattern == subjects.TOKEN_PATTERN  # one rule, twice
    (tmp_path / "config.toml").write_text('[runner]\nid = "host-b_1"\n')
    assert config.load(tmp_path, {}).runner.id == "host-b_1"
