"""Following a service's log for the web's live tail: the last lines of its file, then what is appended, across a
rotation (RotatingStderr moves the file to `.1`) and a truncation, a partial line held until it is whole; under
systemd, its unit's journal through journalctl."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest

from clawden import logtail


def test_the_last_lines_skip_a_line_the_block_cut_and_keep_a_partial_one_for_later(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    log.write_text("".join(f"line {i}\n" for i in range(20_000)) + "half")
    lines, place = logtail.last_lines(log, 3)
    assert lines == ["line 19997", "line 19998", "line 19999"]
    assert place.offset == log.stat().st_size - len("half")
    short = tmp_path / "nats.log"
    short.write_text("one\ntwo\n")
    assert logtail.last_lines(short, 10)[0] == ["one", "two"]
    assert logtail.services(tmp_path) == {"nats": short, "router": log}
    assert logtail.services(tmp_path / "none") == {}


def test_split_holds_a_partial_line_until_its_newline() -> None:
    assert logtail.split("", "ab") == ([], "ab")
    assert logtail.split("ab", "c\nd\ne") == (["abc", "d"], "e")


def test_appended_reads_the_rest_of_a_rotated_file_first_and_a_truncated_one_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "runner.log"
    log.write_text("a\n")
    _, place = logtail.last_lines(log)
    assert logtail.appended(log, place) == (b"", place)
    with log.open("a") as f:
        f.write("b\n")
    chunk, place = logtail.appended(log, place)
    assert chunk == b"b\n"
    with log.open("a") as f:
        f.write("c\n")
    os.replace(log, tmp_path / "runner.log.1")
    log.write_text("d\n")
    chunk, place = logtail.appended(log, place)
    assert chunk == b"c\nd\n"
    log.write_text("")  # truncated
    log.write_text("e\n")
    chunk, place = logtail.appended(log, logtail.Place(100, place.inode))
    assert chunk == b"e\n"
    (tmp_path / "runner.log.1").unlink()
    log.unlink()
    assert logtail.appended(log, place) == (b"", place)
    log.write_text("f\n")  # a new file where the rotated one's rest is gone
    assert logtail.appended(log, place)[0] == b"f\n"


@pytest.mark.asyncio
async def test_follow_gives_the_tail_then_each_appended_line_and_ends_when_stopping(tmp_path: Path) -> None:
    log = tmp_path / "vault.log"
    log.write_text("old\n")
    stopping = asyncio.Event()
    stream = logtail.follow(log, stopping, idle=0.0)
    assert await anext(stream) == ["old"]
    assert await anext(stream) == []  # nothing new: a keepalive
    with log.open("a") as f:
        f.write("new\npart")
    assert await anext(stream) == ["new"]
    stopping.set()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


# ---- under systemd: the journal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "scope"),
    [
        ({}, None),  # `clawden up` or launchd: files
        ({"INVOCATION_ID": "ab12", "MANAGERPID": "1"}, "system"),
        ({"INVOCATION_ID": "ab12", "MANAGERPID": "812"}, "user"),
    ],
)
def test_a_unit_knows_its_peers_log_to_the_journal_of_its_own_manager(environ: dict[str, str], scope: str) -> None:
    assert logtail.journal_scope(environ) == scope


def test_the_journal_is_asked_for_one_unit_as_json_and_units_are_listed_by_the_managers_field() -> None:
    assert logtail.journal_command("user", "channel-telegram", lines=200, follow=True, session=None, as_json=True) == [
        "journalctl",
        "--user-unit=clawden-channel@telegram.service",
        "-n",
        "200",
        "-o",
        "json",
        "--follow",
    ]
    assert logtail.units_command("system") == ["journalctl", "-F", "_SYSTEMD_UNIT"]
    listed = (
        "ssh.service\nclawden-router.service\nclawden-channel@matrix.service\nclawden.target\nclawden-router.service\n"
    )
    assert logtail.journal_services(listed) == ["channel@matrix", "router"]


def test_a_journal_entry_is_shown_with_its_time_and_message_whatever_its_encoding() -> None:
    at = 1_700_000_000_123_456
    shown = dt.datetime.fromtimestamp(at / 1e6).strftime("%Y-%m-%d %H:%M:%S.123")
    assert logtail.entry_line(b'{"__REALTIME_TIMESTAMP": "%d", "MESSAGE": "ready"}\n' % at) == f"{shown} ready"
    as_bytes = list("caf\u00e9".encode())  # not valid UTF-8 as a whole: journalctl sends an array
    assert logtail.entry_line(b'{"__REALTIME_TIMESTAMP": "%d", "MESSAGE": %s}' % (at, str(as_bytes).encode())) == (
        f"{shown} caf\u00e9"
    )
    assert logtail.entry_line(b'{"__REALTIME_TIMESTAMP": "%d", "MESSAGE": null}' % at).endswith(
        "too large for the journal's JSON]"
    )
    assert logtail.entry_line(b"-- No entries --\n") == "-- No entries --"  # not an entry: shown, not dropped


@pytest.mark.process
async def test_following_the_journal_runs_journalctl_keeps_alive_and_stops_it_when_stopping() -> None:
    """The real journalctl (no journal on this machine: it waits for entries, as on a quiet unit)."""
    stopping = asyncio.Event()
    stream = logtail.follow_journal("system", "router", stopping, idle=0.05)
    assert await anext(stream) == []  # silence: a keepalive, journalctl still running
    stopping.set()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_without_journalctl_the_tail_says_so_instead_of_failing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    lines = [line async for line in logtail.follow_journal("user", "router", asyncio.Event())]
    assert len(lines) == 1 and lines[0][0].startswith("cannot run journalctl:")
    names, error = await logtail.journal_units("user")
    assert names == [] and error.startswith("cannot run journalctl:")
