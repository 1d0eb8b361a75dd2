"""The CLI given bad input with no Clawden running: a missing or wrong home, a number out of range, a
closed pipe. Each is said in one or two lines naming the problem and the fix, with its own exit code,
and never a traceback."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden.cli import parser
from clawden.config import free_nats_port
from tests.ops.conftest import fresh_home


def clawden(*args: str, home: Path | None = None, stdout: int = subprocess.PIPE,
            value: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CLAWDEN_HOME", None)
    if home is not None:
        env["CLAWDEN_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "clawden", *args], env=env, input=value, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60)


def said_briefly(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, out.stderr
    return lines


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("logs",), ("doctor",), ("tasks",),
                                  ("secrets", "list"), ("groups", "list"), ("chat", "--once", "hi"),
                                  ("units", "show")])
def test_a_missing_home_says_run_init(tmp_path: Path, args: tuple[str, ...]) -> None:
    home = tmp_path / "nohome"

    out = clawden(*args, home=home)

    assert out.returncode == 2 and out.stdout == ""
    assert said_briefly(out) == [f"clawden: no home at {home}: run `clawden init` (or point --home or "
                                 "CLAWDEN_HOME at yours)"]
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


@pytest.mark.parametrize(("args", "says"), [
    (("wire", "add", "local", "terminal", "main", "--priority", "-99999999999999999999"),
     "argument --priority: -99999999999999999999 is out of range: give -1000000 to 1000000"),
    (("tasks", "runs", "t1", "--limit", "lots"), "argument --limit: 'lots' is not a whole number"),
    (("audit", "--limit", "0"), "argument --limit: 0 is out of range"),
    (("tasks", "frob"), "argument VERB: invalid choice: 'frob'"),
])
def test_a_bad_option_is_two_lines_with_where_the_help_is(tmp_path: Path, args: tuple[str, ...],
                                                          says: str) -> None:
    fresh_home(tmp_path / "home")

    out = clawden(*args, home=tmp_path / "home")

    assert out.returncode == 2
    first, second = said_briefly(out)
    assert says in first and second.startswith("  see `clawden ") and second.endswith(" --help`")


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
def test_a_port_held_by_another_install_is_named_as_such(tmp_path: Path, secured_nats: config_mod.Config,
                                                          args: tuple[str, ...]) -> None:
    mine = fresh_home(tmp_path / "mine", port=secured_nats.nats.port)

    out = clawden(*args, home=Path(mine.home))

    assert out.returncode == 1
    assert f"port {mine.nats.port} belongs to another Clawden install (install id {secured_nats.install_id}" \
        in said_briefly(out)[0]
    assert "[nats] port in" in out.stderr
