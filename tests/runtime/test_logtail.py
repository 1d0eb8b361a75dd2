"""Following a service's log file for the web's live tail: the last lines, then what is appended, across a
rotation (RotatingStderr moves the file to `.1`) and a truncation, a partial line held until it is whole."""

from __future__ import annotations

import asyncio
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
