"""The CLI given bad input with no Clawden running: a missing or wrong home, a number out of range, a
closed pipe. Each is said in one or two lines naming the problem and the fix, with its own exit code,
and never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clawden import config as config_mod
from clawden import natsauth
from clawden.bus import publish, subjects
from clawden.chat import inbound_event
from clawden.cli.main import parser
from clawden.config import free_nats_port
from tests.eventually import eventually_sync
from tests.ops.conftest import Core, fresh_home

pytestmark = pytest.mark.process  # each test runs the `clawden` command as a process


def clawden(
    *args: str, home: Path | None = None, stdout: int = subprocess.PIPE, value: str = ""
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CLAWDEN_HOME", None)
    if home is not None:
        env["CLAWDEN_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "clawden", *args],
        env=env,
        input=value,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


def said_briefly(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, out.stderr
    return lines


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("status", "--json"),
        ("logs",),
        ("doctor",),
        ("tasks",),
        ("secrets", "list"),
        ("groups", "list"),
        ("chat", "--once", "hi"),
        ("units", "show"),
    ],
)
def test_a_missing_home_says_run_init(tmp_path: Path, args: tuple[str, ...]) -> None:
    home = tmp_path / "nohome"

    out = clawden(*args, home=home)

    assert out.returncode == 2 and out.stdout == ""
    assert said_briefly(out) == [
        f"clawden: no home at {home}: run `clawden init` (or point --home or CLAWDEN_HOME at yours)"
    ]
    assert not home.exists()


@pytest.mark.parametrize("args", [("init",), ("up",), ("status",), ("logs",), ("chat",)])
def test_a_home_that_is_a_file_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")

    out = clawden("--home", str(home), *args)

    assert out.returncode == 2
    assert said_briefly(out)[0].startswith(f"clawden: {home} is a file, not a Clawden home: move it aside")
    assert home.read_text() == "not a folder"


def test_home_is_taken_after_the_subcommand_too(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fresh_home(home)
    (home / "logs" / "router.log").write_text("10:00:00.100 I clawden.runtime: router ready\n")

    out = clawden("logs", "--files", "--home", str(home), home=tmp_path / "elsewhere")

    assert out.returncode == 0 and "router ready" in out.stdout, out.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("wire", "add", "local", "terminal", "main", "--priority", "-99999999999999999999"),
            "argument --priority: -99999999999999999999 is out of range: give -1000000 to 1000000",
        ),
        (("tasks", "runs", "t1", "--limit", "lots"), "argument --limit: 'lots' is not a whole number"),
        (("audit", "--limit", "0"), "argument --limit: 0 is out of range"),
        (("tasks", "frob"), "argument VERB: invalid choice: 'frob'"),
    ],
)
def test_a_bad_option_is_two_lines_with_where_the_help_is(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    fresh_home(tmp_path / "home")

    out = clawden(*args, home=tmp_path / "home")

    assert out.returncode == 2
    first, second = said_briefly(out)
    assert says in first and second.startswith("  see `clawden ") and second.endswith(" --help`")


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("status", "--nope"), "clawden status"),
        (("groups", "update", "main", "--nope"), "clawden groups update"),
        (("secrets", "add", "gh", "--type", "generic", "--nope"), "clawden secrets add"),
        (("rules", "add", "r", "--action", "block", "--host", "x.example", "--nope"), "clawden rules add"),
        (("groups", "packages", "add", "main", "--apt", "jq", "--nope"), "clawden groups packages add"),
        (("--nope", "status"), "clawden"),  # before the subcommand: the top's own
    ],
)
def test_an_argument_a_subcommand_does_not_take_is_refused_by_that_subcommand(
    tmp_path: Path, args: tuple[str, ...], command: str
) -> None:
    fresh_home(tmp_path / "home")

    out = clawden(*args, home=tmp_path / "home")

    assert out.returncode == 2
    assert said_briefly(out) == [f"{command}: unrecognized arguments: --nope", f"  see `{command} --help`"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("stauts",), "clawden: argument command: invalid choice: 'stauts': did you mean `clawden status`?"),
        (
            ("secrets", "ad"),
            "clawden secrets: argument secrets_command: invalid choice: 'ad': did you mean `clawden secrets add`?",
        ),
        (("groups", "packages", "ad", "main"), "invalid choice: 'ad': did you mean `clawden groups packages add`?"),
    ],
)
def test_a_mistyped_subcommand_names_the_nearest_at_every_level(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    fresh_home(tmp_path / "home")

    out = clawden(*args, home=tmp_path / "home")

    assert out.returncode == 2
    first, _see = said_briefly(out)
    assert first.endswith(says) and "choose from" not in first


def test_version() -> None:
    out = clawden("--version")
    assert out.returncode == 0 and out.stdout.startswith("clawden 0.")


def test_every_option_says_what_it_is_for() -> None:
    def undocumented(p: argparse.ArgumentParser, path: str) -> list[str]:
        found = [f"{path} {a.option_strings[0]}" for a in p._actions if a.option_strings and a.help is None]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found += undocumented(child, f"{path} {name}")
        return found

    top = parser()
    assert undocumented(top, "clawden") == []
    assert top.description is not None and top.description.startswith("Clawden: your personal AI assistant")


def test_group_verbs_are_only_under_groups() -> None:
    """`packages`, `browser` and `restart` act on one group: `clawden groups packages …`, never `clawden packages`."""

    def verbs(p: argparse.ArgumentParser) -> set[str]:
        return {n for a in p._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices}

    top = parser()
    groups = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices["groups"]
    assert {"packages", "browser", "restart"} <= verbs(groups)
    assert not {"packages", "browser", "restart"} & verbs(top)


def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path: Path) -> None:
    fresh_home(tmp_path / "home")
    read, write = os.pipe()
    os.close(read)  # as `| head -1` once it has its line: every write now fails with EPIPE
    try:
        out = clawden("units", "show", "--user", home=tmp_path / "home", stdout=write)
    finally:
        os.close(write)

    assert out.returncode == 141 and out.stderr == ""


def test_init_gives_a_new_install_a_free_nats_port() -> None:
    with socket.socket() as held:  # another install's NATS, say
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]

        assert free_nats_port(port) != port
    assert free_nats_port(port) == port  # the usual port, once it is free


@pytest.mark.parametrize("args", [("status",), ("chat", "--once", "hi"), ("tasks",), ("up",)])
def test_a_port_held_by_another_install_is_named_as_such(
    tmp_path: Path, secured_nats: config_mod.Config, args: tuple[str, ...]
) -> None:
    mine = fresh_home(tmp_path / "mine", port=secured_nats.nats.port)

    out = clawden(*args, home=Path(mine.home))

    assert out.returncode == 1
    assert (
        f"port {mine.nats.port} belongs to another Clawden install (install id {secured_nats.install_id}"
        in said_briefly(out)[0]
    )
    assert "[nats] port in" in out.stderr


# ---- with the core services running (no Docker) --------------------------------------------------


async def _talk(core: Core, chat_id: str) -> None:
    """A line from the owner's terminal, so the router opens a session (no runner answers here)."""
    nc = await natsauth.connect_as(core.cfg, natsauth.CLI)
    try:
        event = inbound_event(chat_id, getpass.getuser(), "hello")
        await publish(nc.jetstream(), subjects.inbound("local"), event, msg_id=event.key)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def session(core: Core) -> str:
    asyncio.run(_talk(core, "tasks-chat"))
    return str(eventually_sync(lambda: chat_sessions(core, "tasks-chat"), 30)[0]["id"])


def chat_sessions(core: Core, *chat_ids: str) -> list[dict[str, Any]]:
    """The sessions of these chats, once each has one (the router commits a session a moment after its
    message), else none."""
    listed = [s for s in json.loads(core.clawden("sessions", "--json").stdout or "[]") if s["chat_id"] in chat_ids]
    return listed if {s["chat_id"] for s in listed} == set(chat_ids) else []


def tasks(core: Core) -> list[dict[str, object]]:
    out = core.clawden("tasks", "list", "--json")
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("2020-01-01T08:00", "hi"), "'2020-01-01T08:00' is in the past"),
        (
            ("every 1s", "hi"),
            "'every 1s' would wake the model every 1 s; the shortest interval is 1 min, unless a "
            "pre-check script decides when the model is woken (--script)",
        ),
    ],
)
def test_a_task_that_would_fire_at_once_or_every_second_is_refused(
    core: Core, session: str, args: tuple[str, ...], says: str
) -> None:
    before = tasks(core)

    out = core.clawden("tasks", "add", *args, "--session", session)

    assert out.returncode == 1 and says in said_briefly(out)[0]
    assert "add --now" in out.stderr or "every" in args[0]
    assert tasks(core) == before


def test_a_past_time_with_now_and_a_fast_interval_with_a_script_are_taken(
    core: Core, session: str, tmp_path: Path
) -> None:
    script = tmp_path / "check.sh"
    script.write_text("echo '{\"wakeAgent\": false}'\n")

    late = core.clawden("tasks", "add", "2020-01-01T08:00", "remind me", "--session", session, "--now", "--json")
    fast = core.clawden("tasks", "add", "every 10s", "look", "--session", session, "--script", str(script), "--json")

    assert late.returncode == 0 and fast.returncode == 0, late.stderr + fast.stderr
    ids = {json.loads(late.stdout)["id"], json.loads(fast.stdout)["id"]}
    assert ids <= {str(t["id"]) for t in tasks(core)}
    for task_id in ids:
        core.clawden("tasks", "cancel", task_id)


def test_tasks_list_shows_the_chat_and_show_prints_readable_times(core: Core, session: str) -> None:
    added = core.clawden("tasks", "add", "0 8 * * *", "good morning", "--session", session, "--tz", "UTC", "--json")
    task = json.loads(added.stdout)

    listed = core.clawden("tasks", "list").stdout
    shown = core.clawden("tasks", "show", task["id"]).stdout
    core.clawden("tasks", "cancel", task["id"])

    header, *rows = listed.splitlines()
    assert header.split()[:4] == ["TASK", "GROUP", "CHAT", "STATUS"]
    assert any(row.split()[:3] == [task["id"], "main", "local:tasks-chat"] for row in rows), listed
    assert "chat: local:tasks-chat" in shown
    next_run = dt.datetime.fromtimestamp(task["next_run"], dt.UTC).strftime("%Y-%m-%d 08:00:00 UTC")
    assert f"next_run: {next_run}" in shown and f"{task['next_run']}" not in shown, shown
    assert "last_run: -" in shown


def groups(core: Core) -> list[str]:
    return [g["name"] for g in json.loads(core.clawden("groups", "list", "--json").stdout)]


def test_deleting_an_agent_group_where_nobody_can_answer_needs_yes(core: Core) -> None:
    out = core.clawden("groups", "delete", "main")

    assert out.returncode == 1
    assert said_briefly(out) == [
        "clawden: deleting agent group main with its 1 wiring(s) and its sessions (the one "
        "`clawden chat` and new chats talk to) needs --yes"
    ]
    assert "main" in groups(core)


def test_a_model_that_is_not_claudes_is_warned_of_and_yes_deletes(core: Core) -> None:
    made = core.clawden("groups", "create", "gptish", "--model", "gpt-4o")

    assert made.returncode == 0 and said_briefly(made)[0].startswith(
        "clawden: warning: 'gpt-4o' is not a Claude model name Clawden knows"
    )
    gone = core.clawden("groups", "delete", "gptish", "--yes")
    assert gone.returncode == 0 and "deleted agent group gptish" in gone.stdout
    assert "gptish" not in groups(core)


def test_updating_a_group_that_does_not_exist_says_so_before_any_model_warning(core: Core) -> None:
    out = core.clawden("groups", "update", "famly", "--model", "gpt-4o")

    assert out.returncode == 1
    assert "famly" in said_briefly(out)[0] and "warning" not in out.stderr
    updated = core.clawden("groups", "update", "main", "--model", "gpt-4o")
    assert updated.returncode == 0 and "'gpt-4o' is not a Claude model name" in updated.stderr
    core.clawden("groups", "update", "main", "--model", "")


# ---- every subcommand, given bad input: running, stopped, and pointed at another install's port -------

# (arguments, what the one or two lines must say) with the core services running.
BAD_INPUT = [
    (("approvals", "show", "nope"), "no approval 'nope' (see `clawden approvals list`)"),
    (("approvals", "approve", "nope"), "no approval 'nope'"),
    (("approvals", "answer", "nope", "maybe"), "no approval 'nope'"),
    (("approvals", "list", "--status", "bogus"), "argument --status: invalid choice: 'bogus'"),
    (("channels", "list", "--bogus"), "unrecognized arguments: --bogus"),
    (("logs", "nosuch", "--files"), "no log for nosuch"),
    (("groups", "get", "nosuch"), "no agent group named 'nosuch' (see `clawden groups list`)"),
    (("groups", "create", "Bad!Name"), "agent group name 'Bad!Name': use 1-40 lowercase letters"),
    (("groups", "update", "main", "--memory", "lots"), "memory 'lots': give a size from 64m to 1024g"),
    (("groups", "update", "main", "--max-turns", "-5"), "-5 is out of range: give 0 to 1000000"),
    (("groups", "delete", "nosuch", "--yes"), "no agent group named 'nosuch'"),
    (("chats", "create", "nosuchchannel", "x"), "no channel nosuchchannel; the channels are: local, "),
    (("chats", "update", "local", "nosuch", "--name", "x"), "no chat 'nosuch' on local (see `clawden chats list`)"),
    (("chats", "delete", "local", "nosuch"), "no chat 'nosuch' on local"),
    (("wire", "add", "nosuchchannel", "x", "main"), "no channel nosuchchannel; the channels are: local, "),
    (("wire", "add", "local", "terminal", "nosuch"), "no agent group named 'nosuch'"),
    (
        ("wire", "add", "local", "terminal", "main", "--engage", "pattern", "--pattern", "("),
        "engage pattern '(' is not a regular expression",
    ),
    (("wire", "remove", "local", "nosuch", "main"), "main is not wired to 'nosuch' on local"),
    (("roles", "grant", "nobody", "owner"), "user 'nobody': users are platform identities like telegram:12345"),
    (("roles", "grant", "local:ada", "admin", "--group", "nosuch"), "no agent group named 'nosuch'"),
    (("members", "add", "nosuch", "local:ada"), "no agent group named 'nosuch'"),
    (("destinations", "add", "main", "d", "nosuchchannel", "x"), "no channel nosuchchannel"),
    (("destinations", "remove", "main", "nosuch"), "main has no destination named 'nosuch'"),
    (("sessions", "--limit", "0"), "argument --limit: 0 is out of range"),
    (("dropped", "--limit", "x"), "argument --limit: 'x' is not a whole number"),
    (("pair", "nosuch"), "no channel nosuch; the channels are: "),
    (("pair", "local"), "`local` is the terminal"),
    (("tasks", "show", "t-nope"), "there is no task t-nope"),
    (("tasks", "add", "whenever", "hi", "--session", "s-nope"), "no session s-nope (see `clawden sessions`)"),
    (("tasks", "pause", "t-nope"), "there is no task t-nope"),
    (("tasks", "runs", "t-nope"), "there is no task t-nope"),
    (("secrets", "remove", "nosuch"), "no secret named 'nosuch'"),
    (("secrets", "grant", "nosuch", "--agent", "main"), "no secret named 'nosuch'"),
    (
        ("secrets", "add", "gh", "--type", "generic", "--host", "*.io", "--header", "Authorization"),
        "public suffix 'io'",
    ),
    (("rules", "remove", "nosuch"), "no rule named 'nosuch'"),
    (("audit", "--since", "yesterday"), "'yesterday' is not like 30m, 2h, 7d"),
    (("egress", "nosuch", "allowlist"), "no agent group nosuch; the groups are: main"),
    (("chat", "--chat", "a.b", "--once", "hi"), "a chat name is one word"),
    (("chat", "--once", " "), "--once needs a message to send"),
    (("up", "--service", "bogus"), "no service bogus; the services are: router, runner, vault, scheduler, "),
    (("run", "bogus"), "unknown service 'bogus'"),
    (("units", "show", "--bogus"), "unrecognized arguments: --bogus"),
]
NEEDS_NATS = [
    args
    for args, _ in BAD_INPUT
    if args[0] not in ("logs", "sessions", "dropped", "audit", "run", "up", "units", "channels")
    and "--status" not in args
    and "--max-turns" not in args
    and args[:2] != ("chat", "--once")
]


@pytest.mark.parametrize(("args", "says"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_with_clawden_running(core: Core, args: tuple[str, ...], says: str) -> None:
    out = core.clawden(*args, value="ghp_a-token-that-must-go-nowhere-1234")

    assert out.returncode != 0, out.stdout
    assert says in " ".join(said_briefly(out)), out.stderr


@pytest.mark.parametrize("args", NEEDS_NATS, ids=[" ".join(a) for a in NEEDS_NATS])
def test_bad_input_with_clawden_stopped(tmp_path: Path, args: tuple[str, ...]) -> None:
    cfg = fresh_home(tmp_path / "home")  # nothing runs on its port

    out = clawden(*args, home=Path(cfg.home), value="x")

    assert out.returncode != 0, out.stdout
    lines = said_briefly(out)
    assert (
        f"cannot reach NATS at {cfg.nats_url}" in lines[0]
        or lines[0].startswith("clawden: no channel")
        or "`local` is the terminal" in lines[0]
        or "a chat name is one word" in lines[0]
    ), out.stderr
    assert "clawden up" in out.stderr or "channels are" in out.stderr or "one word" in out.stderr


@pytest.mark.parametrize("args", NEEDS_NATS, ids=[" ".join(a) for a in NEEDS_NATS])
def test_bad_input_pointed_at_another_installs_port(core: Core, tmp_path: Path, args: tuple[str, ...]) -> None:
    mine = fresh_home(tmp_path / "mine", port=core.cfg.nats.port)

    out = clawden(*args, home=Path(mine.home), value="x")

    assert out.returncode != 0, out.stdout
    lines = said_briefly(out)
    assert (
        f"port {mine.nats.port} belongs to another Clawden install (install id {core.cfg.install_id}" in lines[0]
        or lines[0].startswith("clawden: no channel")
        or "`local` is the terminal" in lines[0]
        or "a chat name is one word" in lines[0]
    ), out.stderr


def test_chats_list_says_what_answers_each_chat_and_a_chats_own_wiring_replaces_the_wildcard(
    core: Core, session: str
) -> None:
    assert core.clawden("groups", "create", "family").returncode == 0
    try:
        assert core.clawden("chats", "create", "local", "kitchen").returncode == 0
        assert core.clawden("wire", "add", "local", "kitchen", "family").returncode == 0
        asyncio.run(_talk(core, "kitchen"))

        rows = {tuple(line.split()[:2]): line for line in core.clawden("chats", "list").stdout.splitlines()[1:]}
        assert rows[("local", "tasks-chat")].endswith("main (via *)")
        assert rows[("local", "kitchen")].endswith("family")
        kitchen = eventually_sync(lambda: chat_sessions(core, "kitchen"), 30)
        assert [s["agent_group"] for s in kitchen] == ["family"]  # not main too, through `local *`
    finally:
        core.clawden("chats", "delete", "local", "kitchen")
        core.clawden("groups", "delete", "family", "--yes")


@pytest.mark.parametrize("args", [("status", "--json"), ("groups", "list"), ("secrets", "list", "--json")])
def test_status_and_the_rest_end_quietly_when_their_reader_went_away(core: Core, args: tuple[str, ...]) -> None:
    read, write = os.pipe()
    os.close(read)  # `| head -1` that already has its line
    try:
        out = subprocess.run(
            [sys.executable, "-m", "clawden", *args],
            env=core.env(),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)

    assert out.returncode == 141 and out.stderr == ""


def test_a_task_without_session_goes_to_the_owners_terminal_not_the_latest_chat(core: Core, session: str) -> None:
    asyncio.run(_talk(core, "terminal"))
    asyncio.run(_talk(core, "somebody-elses"))  # the group's most recent chat, which nobody may watch
    eventually_sync(lambda: chat_sessions(core, "terminal", "somebody-elses"), 30)

    added = core.clawden("tasks", "add", "0 9 * * *", "plan the day", "--json")
    task = json.loads(added.stdout)
    core.clawden("tasks", "cancel", task["id"])

    assert (task["channel"], task["chat_id"]) == ("local", "terminal")
