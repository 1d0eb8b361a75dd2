"""An agent group's settings (`clawden groups create|update`): refused when the runner could not apply
them, and sent with every wake so the runner starts the group's containers with them."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext

from clawden.bus import ctl
from clawden.bus import events as ev
from clawden.servicedb import apply_migrations
from services.router.control import Control
from services.router.schema import MIGRATIONS
from services.router.store import RouterError, RouterStore
from tests.router.conftest import RouterProcess, collect
from tests.router.test_service import WAKES, chat_message, send


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> RouterStore:
    s = RouterStore.open(tmp_path / "router.db")
    s.seed("main", "local", "alice", 1_000.0)
    return s


@pytest.fixture
def control(store: RouterStore) -> Control:
    return Control(store, clock=Clock())


def call(control: Control, resource: str, **payload: Any) -> Any:
    verb, request = ctl.Subject("router", resource).decode(msgspec.json.encode(payload))
    return msgspec.to_builtins(control.handle(verb, request))


def wake_from_terminal(store: RouterStore, n: int) -> ev.Wake:
    message = ev.InboundMessage(
        route=ev.Route(channel="local", chat_id="term"),
        message_id=f"m{n}",
        sender=ev.Sender(id="local:alice"),
        text="hi",
        sent_at=float(n),
    )
    outcome = store.route_batch([message], 2_000.0 + n)
    store.published([o.id for o in outcome.outgoing])
    [wake] = [e for e in map(ev.decode, (o.payload for o in outcome.outgoing)) if isinstance(e, ev.Wake)]
    return wake


def test_a_wake_carries_the_groups_settings_as_the_cli_left_them(store: RouterStore, control: Control) -> None:
    call(
        control,
        "groups",
        op="update",
        name="main",
        model="claude-group-1",
        folder="home",
        container={"memory": "300m", "pids": 200, "cpus": 1.5, "image": "clawden-agent:v2", "idle_timeout": 600},
    )
    group = wake_from_terminal(store, 1).group
    assert group is not None
    assert msgspec.structs.replace(group, changed_at=0) == ev.GroupSettings(
        folder="home",
        model="claude-group-1",
        image="clawden-agent:v2",
        memory="300m",
        cpus=1.5,
        pids=200,
        idle_timeout=600,
    )
    assert group.changed_at > 1_000.0


def test_a_change_reaches_the_next_wake_stamped_later(store: RouterStore, control: Control) -> None:
    before = wake_from_terminal(store, 1).group
    call(control, "groups", op="update", name="main", container={"pids": 256})
    after = wake_from_terminal(store, 2).group
    assert before is not None and after is not None
    assert (before.pids, after.pids) == (0, 256)
    assert after.changed_at > before.changed_at


def test_an_empty_value_clears_a_setting_so_the_runners_own_applies(store: RouterStore, control: Control) -> None:
    call(control, "groups", op="update", name="main", model="claude-group-1", container={"memory": "1g", "pids": 99})
    shown = call(control, "groups", op="update", name="main", model="", container={"memory": "", "pids": 0})
    assert (shown["model"], shown["container"]) == ("", {})
    group = wake_from_terminal(store, 1).group
    assert group is not None and (group.model, group.memory, group.pids) == ("", "", 0)


@pytest.mark.parametrize("op", ["create", "update"])
def test_a_provider_other_than_claude_is_refused_and_nothing_is_stored(control: Control, op: str) -> None:
    with pytest.raises(RouterError, match="provider 'openai': only 'claude' is available"):
        call(control, "groups", op=op, name="main" if op == "update" else "work", provider="openai")
    assert [(g["name"], g["provider"]) for g in call(control, "groups", op="list")] == [("main", "claude")]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"container": {"memory": "lots"}}, "memory 'lots': give a size from 64m to 1024g"),
        ({"container": {"memory": "1m"}}, "memory '1m'"),
        ({"container": {"cpus": 0.001}}, "cpus 0.001: give a number from 0.01"),
        ({"container": {"pids": 5}}, "pids 5: give a number from 32 to 65536"),
        ({"container": {"pids": -1}}, "pids -1"),
        ({"container": {"idle_timeout": 1}}, "idle timeout 1.0: give seconds from 5"),
        ({"container": {"image": "Evil Image; rm -rf /"}}, "give an image reference like clawden-agent:latest"),
        ({"model": "claude\nX=1"}, "give a model name"),
        ({"folder": "global"}, "folder 'global' is the memory every agent group shares"),
        ({"folder": "../etc"}, "agent group name '../etc'"),
    ],
)
def test_settings_the_runner_would_refuse_are_refused_in_plain_words(
    control: Control, payload: dict[str, Any], words: str
) -> None:
    before = call(control, "groups", op="get", name="main")
    with pytest.raises(RouterError, match=words.replace("(", r"\(").replace(".", r"\.")):
        call(control, "groups", op="update", name="main", **payload)
    with pytest.raises(RouterError):
        call(control, "groups", op="create", name="work", **payload)
    assert call(control, "groups", op="get", name="main") == before
    assert [g["name"] for g in call(control, "groups", op="list")] == ["main"]


def test_a_group_named_global_needs_a_folder_of_its_own(control: Control) -> None:
    with pytest.raises(RouterError, match="give another with --folder"):
        call(control, "groups", op="create", name="global")
    assert call(control, "groups", op="create", name="global", folder="global-agent")["folder"] == "global-agent"


def test_an_upgraded_router_db_stamps_existing_groups_with_their_creation(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE migrations (name TEXT PRIMARY KEY, at REAL);")
    apply_migrations(old, MIGRATIONS[:2])
    old.execute("INSERT INTO agent_groups (name, folder, created_at, model) VALUES ('work', 'w', 42, 'm-1')")
    old.commit()
    old.close()
    store = RouterStore.open(path)
    assert store.group_settings("work") == ev.GroupSettings(folder="w", model="m-1", changed_at=42.0)
    assert store.group_settings("ghost") is None


async def test_through_the_cli_the_settings_ride_on_the_next_wake_and_a_bad_provider_is_refused(
    router: RouterProcess, js: JetStreamContext
) -> None:
    def clawden(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "clawden", *args], env=router.env(), capture_output=True, text=True, timeout=60
        )

    refused, updated = await asyncio.to_thread(
        lambda: (
            clawden("groups", "update", "main", "--provider", "openai"),
            clawden("groups", "update", "main", "--memory", "300m", "--pids", "200", "--model", "claude-group-1"),
        )
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == "clawden: provider 'openai': only 'claude' is available"
    assert updated.returncode == 0, updated.stderr
    await send(js, chat_message(1, chat="term", channel="local", sender="local:someone"))
    [wake] = [w for w in await collect(js, "t-settings", WAKES, want=1) if isinstance(w, ev.Wake)]
    assert wake.group is not None
    assert (wake.group.memory, wake.group.pids, wake.group.model, wake.group.folder) == (
        "300m",
        200,
        "claude-group-1",
        "main",
    )
