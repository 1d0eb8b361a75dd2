"""Thousands of malformed, truncated, oversized and wrongly typed payloads on every subject each bus
identity may publish: every process keeps running, settles each payload once, says why it refused
it, and then still answers a chat."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawden import config, setup
from clawden.cli.main import main as cli_main
from clawden.registry import installed_channels
from tests.channels.harness import BridgeProcess
from tests.chaos import fuzz
from tests.chaos.chaos import SERVICES
from tests.e2e.harness import Stack, Terminal, service_pid, start_stack
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.docker
# bench/chaos.py --fuzz runs any count; CI fires this many (the figure) in about a minute.
SHOTS = int(os.environ.get("CLAWDEN_FUZZ_SHOTS", "10000"))
TRACEBACK = re.compile(r"^Traceback \(most recent call last\)", re.MULTILINE)


ADDED_RUNNER = "fuzz-b"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str) -> Iterator[Stack]:
    """The e2e stack with a runner for another host added (`clawden runners add fuzz-b`) before `clawden up`
    reads the identities: the fuzzer fires as `runner-fuzz-b` too, on every subject it may publish."""
    home = tmp_path_factory.mktemp("home")
    setup.init(home)
    assert cli_main(["--home", str(home), "runners", "add", ADDED_RUNNER]) == 0
    s = start_stack(home)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bridge(stack: Stack) -> Iterator[BridgeProcess]:
    fake = FakeTelegram().start_in_thread()
    b = BridgeProcess(stack.home, stack.nats_url, fake).start()
    yield b
    b.close()
    fake.stop_thread()


def log_sizes(home: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in (home / "logs").glob("*.log")}


def since(sizes: dict[Path, int], path: Path) -> str:
    with path.open("rb") as f:
        f.seek(sizes.get(path, 0))
        return f.read().decode(errors="replace")


@pytest.mark.timeout(1200)
async def test_malformed_payloads_on_every_subject_are_refused_once_and_nothing_falls_over(
    stack: Stack, bridge: BridgeProcess
) -> None:
    cfg = config.load(stack.home)
    nc = await stack.connect()
    try:
        async with Terminal(stack, "fuzz-before") as term:  # a container is up while the payloads land
            assert ">hello before<" in (await term.ask("hello before", timeout=120)).text
        pids = {s: await service_pid(stack, s) for s in SERVICES}
        before = await fuzz.drained(nc)
        endpoints = await fuzz.control_endpoints(nc, [*SERVICES, "channel@telegram"])
        aims = fuzz.targets(cfg, tuple(installed_channels()), endpoints)
        shots = fuzz.corpus(aims, SHOTS)
        sizes = log_sizes(stack.home)

        fired = await fuzz.fire(cfg, shots)
        after = await fuzz.drained(nc)
    finally:
        await nc.close()

    # Every identity, every subject and every kind of payload was tried.
    assert {a.identity for a in aims} >= {*SERVICES, "channel-telegram", "cli", f"runner-{ADDED_RUNNER}"}
    assert set(fired.by_kind) >= {
        "garbage",
        "json",
        "truncated",
        "retyped",
        "untagged",
        "missing",
        "oversized",
        "spoofed",
        "wellformed",
    }, fired.by_kind
    assert sum(fired.by_kind.values()) == SHOTS
    # A control endpoint answers a bad request with an error; none may stay silent.
    assert fired.unanswered == []
    # Nothing died or restarted; the bridge (outside `clawden up`) is still running.
    assert {s: await service_pid(stack, s) for s in SERVICES} == pids
    assert stack.proc.poll() is None and bridge.proc is not None and bridge.proc.poll() is None
    # Settled once: no durable redelivered anything because of a payload (a handler that raised
    # on one would nak it and see it again, and log it again, up to max_deliver times).
    redelivered = {n: s["redelivered"] - before.get(n, {}).get("redelivered", 0) for n, s in after.items()}
    assert all(v == 0 for v in redelivered.values()), redelivered
    # Each refusal is a line with its reason, not a crash's traceback.
    logs = {p.name: since(sizes, p) for p in log_sizes(stack.home)}
    assert not {n: t for n, t in logs.items() if TRACEBACK.search(t)}, "a payload raised past a handler"
    for service in ("router", "runner", "scheduler", "approvals"):
        assert re.search(r"malformed|dropping|refus|invalid|ignor", logs[f"{service}.log"]), service
    refusals = sum(len(re.findall(r"^\S+ \S+ [EW] ", t, re.MULTILINE)) for t in logs.values())
    assert refusals <= SHOTS, f"{refusals} warnings for {SHOTS} payloads: something logs a payload twice"

    # And the chats still work.
    async with Terminal(stack, "fuzz-after") as term:
        assert ">hello after<" in (await term.ask("hello after", timeout=120)).text
