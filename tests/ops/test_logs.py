"""`clawden logs` without units: the files `clawden up` writes, interleaved by time, by session, followed;
with units: the journalctl it runs."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clawden.cli import logview

ROUTER = """\
10:00:00.100 I clawden.runtime: router ready
10:00:02.000 I clawden.router: local:1 from local:terminal -> session s-1 of main session=s-1 group=main
10:00:04.000 E clawden.router: handler failed session=s-2
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: boom
"""
RUNNER = """\
10:00:01.000 I clawden.runtime: runner ready
10:00:03.000 I clawden.runner: started container 0123abcd for session s-1 session=s-1 group=main
"""
NATS = "[4242] 2026/11/21 09:59:59.500000 [INF] Server is ready\n"


def write_logs(folder: Path, files: dict[str, str], at: dt.datetime) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.log").write_text(text)
        os.utime(folder / f"{name}.log", (at.timestamp(), at.timestamp()))
    return folder


def read(folder: Path, service: str | None = None, *, lines: int = 50, session: str | None = None) -> str:
    out = io.StringIO()
    logview.read_files(folder, service, lines=lines, session=session, follow=False, out=out)
    return out.getvalue()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return write_logs(
        tmp_path / "logs", {"router": ROUTER, "runner": RUNNER, "nats": NATS}, dt.datetime(2026, 11, 21, 10, 5)
    )


def test_every_service_is_interleaved_by_time_with_its_name(logs: Path) -> None:
    shown = read(logs).splitlines()

    assert [line.split(" | ")[0].strip() for line in shown[:5]] == ["nats", "router", "runner", "router", "runner"]
    assert shown[0] == "nats       | " + NATS.strip()
    # a traceback stays under its own line
    assert shown[-4:] == [
        "router     | 10:00:04.000 E clawden.router: handler failed session=s-2",
        "             Traceback (most recent call last):",
        '               File "x.py", line 1, in <module>',
        "             ValueError: boom",
    ]


def test_one_service_is_shown_as_written_and_only_its_last_lines(logs: Path) -> None:
    assert read(logs, "runner") == RUNNER
    assert read(logs, "router", lines=1) == "\n".join(ROUTER.splitlines()[2:]) + "\n"
    assert read(logs, lines=2).count(" | 10:00:0") == 2


def test_a_session_keeps_only_its_lines_of_every_service(logs: Path) -> None:
    shown = read(logs, session="s-1")

    assert [line.split(" | ")[0].strip() for line in shown.splitlines()] == ["router", "runner"]
    assert "s-2" not in shown and "s-1" in shown
    assert "handler failed" in read(logs, session="s-2") and "Traceback" in read(logs, session="s-2")
    assert read(logs, session="s-") == ""  # whole ids only


def test_lines_either_side_of_midnight_stay_in_order(tmp_path: Path) -> None:
    folder = write_logs(
        tmp_path / "logs",
        {
            "router": "23:59:58.000 I r: late\n00:00:02.000 I r: early\n",
            "runner": "23:59:59.000 I r: later\n00:00:01.000 I r: earliest\n",
        },
        dt.datetime(2026, 11, 22, 0, 0, 3),
    )

    assert [line.rsplit(": ", 1)[1] for line in read(folder).splitlines()] == ["late", "later", "earliest", "early"]


def test_dated_lines_are_placed_by_their_date_not_the_files_last_write(tmp_path: Path) -> None:
    folder = write_logs(
        tmp_path / "logs",
        {
            "router": "2026-11-20 23:00:00.000 I r: two days ago\n2026-11-22 09:00:00.000 I r: today\n",
            "runner": "2026-11-21 12:00:00.000 I r: yesterday\n",
            "nats": "[1] 2026/11/21 08:00:00.000000 [INF] yesterday morning\n",
        },
        dt.datetime(2026, 11, 22, 9, 30),
    )
    os.utime(folder / "runner.log", (dt.datetime(2026, 11, 22, 9, 0).timestamp(),) * 2)  # touched today

    assert [line.rsplit(": ", 1)[-1].split("] ")[-1] for line in read(folder).splitlines()] == [
        "two days ago",
        "yesterday morning",
        "yesterday",
        "today",
    ]


def test_a_long_log_is_read_from_its_end(tmp_path: Path) -> None:
    lines = [f"{h:02d}:{m:02d}:00.000 I clawden.router: line {h * 60 + m}" for h in range(10, 20) for m in range(60)]
    body = "\n".join(lines * 200) + "\n"  # about 5 MB
    folder = write_logs(tmp_path / "logs", {"router": body}, dt.datetime(2026, 11, 21, 20, 0))

    assert read(folder, "router", lines=3).splitlines() == lines[-3:]


def test_a_service_without_a_log_names_those_there_are(logs: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no log for channel@telegram .*\(there are: nats, router, runner\)"):
        read(logs, "channel@telegram")


@pytest.mark.parametrize(("asked", "meant"), [("telegram", "channel@telegram"), ("ruoter", "router")])
def test_a_name_without_a_log_suggests_the_log_it_most_likely_meant(tmp_path: Path, asked: str, meant: str) -> None:
    body = {"router": ROUTER, "channel-telegram": "10:00:00.000 I clawden.channels: telegram bridge ready\n"}
    folder = write_logs(tmp_path / "logs", body, dt.datetime(2026, 11, 21, 10, 5))

    with pytest.raises(FileNotFoundError) as refused:
        read(folder, asked)

    assert str(refused.value).endswith(f"(there are: channel@telegram, router); did you mean `clawden logs {meant}`?")


def test_following_prints_new_lines_of_the_session_as_they_are_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = write_logs(home / "logs", {"router": ROUTER, "runner": RUNNER}, dt.datetime(2026, 11, 21, 10, 5))
    env = dict(os.environ, CLAWDEN_HOME=str(home))
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawden", "logs", "--files", "-f", "--session", "s-1", "-n", "1"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("runner     | 10:00:03.000")
        with (folder / "router.log").open("a") as log:
            log.write("10:00:05.000 I clawden.router: other session=s-2\n")
            log.flush()
            log.write("10:00:06.000 I clawden.router: wake session=s-1\n10:00:07.0")  # a line half written
            log.flush()
        assert proc.stdout.readline() == "router     | 10:00:06.000 I clawden.router: wake session=s-1\n"
        with (folder / "channel-telegram.log").open("a") as log:  # a bridge that started meanwhile
            log.write("10:00:08.000 I clawden.channels: sent session=s-1\n")
        assert proc.stdout.readline() == "channel-telegram | 10:00:08.000 I clawden.channels: sent session=s-1\n"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


ROTATING = """
import logging, sys
from clawden import logs
logs.MAX_LOG_BYTES = 2000
logs.setup("clawden-router")
for i in range(300):
    logging.getLogger("clawden.router").info("line %03d", i)
print("printed, not logged", file=sys.stderr)
print("and to stdout", flush=True)
"""


def test_a_service_log_under_clawden_up_is_dated_and_rotated_by_size(tmp_path: Path) -> None:
    path = tmp_path / "router.log"
    with path.open("ab") as stderr:  # as the supervisor starts a service
        subprocess.run(
            [sys.executable, "-c", ROTATING],
            stdout=stderr,
            stderr=stderr,
            check=True,
            env=dict(os.environ, CLAWDEN_LOG_FILE=str(path)),
        )

    kept = [path, *(tmp_path / f"router.log.{n}" for n in (3, 2, 1))]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)  # no .4: the oldest went
    assert all(p.stat().st_size < 2000 + 100 for p in kept)
    newest = path.read_text().splitlines()
    assert newest[-3].endswith("I clawden.router: line 299")
    assert newest[-2:] == ["printed, not logged", "and to stdout"]
    assert logview.stamp_of(newest[0])[1] is not None, "lines in files carry their date"
    numbers = [int(line[-3:]) for p in [*kept[1:], path] for line in p.read_text().splitlines() if "line" in line]
    assert numbers == list(range(numbers[0], 300)), "rotation loses no line"


def test_following_goes_on_across_a_rotation(tmp_path: Path) -> None:
    folder = write_logs(tmp_path / "logs", {"router": "10:00:00.000 I r: first\n"}, dt.datetime(2026, 11, 21, 10, 5))
    path = folder / "router.log"
    follow = logview.follow_files(folder, "router", {"router": logview.Place.of(path)}, None)
    with path.open("a") as log:
        log.write("10:00:01.000 I r: before the rotation\n")
    path.rename(folder / "router.log.1")
    path.write_text("10:00:02.000 I r: after it\n")

    shown = [next(follow).text, next(follow).text]
    assert shown == ["10:00:01.000 I r: before the rotation", "10:00:02.000 I r: after it"]


def test_names_map_to_units_and_files() -> None:
    assert logview.unit_name("router") == "clawden-router.service"
    assert (
        logview.unit_name("channel-telegram")
        == logview.unit_name("channel@telegram")
        == "clawden-channel@telegram.service"
    )
    assert logview.file_name("clawden-channel@telegram.service") == "channel-telegram.log"
    assert logview.file_name("nats") == "nats.log"
    with pytest.raises(ValueError):
        logview.canonical("../etc/passwd")


def test_installed_units_are_read_with_journalctl_filtered_by_session(tmp_path: Path) -> None:
    user, system = tmp_path / "user", tmp_path / "system"
    dirs: list[tuple[logview.Scope, Path]] = [("user", user), ("system", system)]
    assert logview.installed_scope(dirs, ask_systemctl=False) is None
    system.mkdir()
    (system / "clawden.target").write_text("[Unit]\n")
    assert logview.installed_scope(dirs, ask_systemctl=False) == "system"

    assert logview.journal_command("system", "channel@telegram", lines=20, follow=True, session="s-1") == [
        "journalctl",
        "--unit=clawden-channel@telegram.service",
        "-n",
        "20",
        "--follow",
        "CLAWDEN_SESSION=s-1",
    ]
    assert logview.journal_command("user", None, lines=50, follow=False, session=None) == [
        "journalctl",
        "--user-unit=clawden-*",
        "-n",
        "50",
    ]
