"""Logging for journald: native fields on the journal's socket when stderr is the journal, lines otherwise."""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawden import logs


def decode_journal(datagram: bytes) -> dict[str, str]:
    """The native protocol's two forms: `KEY=value\\n`, and `KEY\\n<u64 le length><bytes>\\n`."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, rest
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8 : 8 + size].decode()
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "journal.sock"))
    sock.settimeout(2)
    yield sock
    sock.close()


def test_records_reach_the_journal_with_clawden_fields_journalctl_can_match(journal: socket.socket) -> None:
    handler = logs.JournalHandler("clawden-runner", address=journal.getsockname())
    log = logging.getLogger("test.journal")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning(
            "wake %s for session %s",
            "k1",
            "s-1",
            extra=logs.context("s-1", "main", "telegram:42") | {"task_id": "t-9", "attempt": 2},
        )
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("two\nlines")
    finally:
        log.removeHandler(handler)
        handler.close()
    first = decode_journal(journal.recv(65536))
    assert first["MESSAGE"] == "wake k1 for session s-1"
    assert (first["PRIORITY"], first["SYSLOG_IDENTIFIER"], first["LOGGER"]) == ("4", "clawden-runner", "test.journal")
    assert {k: v for k, v in first.items() if k.startswith("CLAWDEN_")} == {
        "CLAWDEN_SERVICE": "runner",
        "CLAWDEN_SESSION": "s-1",
        "CLAWDEN_GROUP": "main",
        "CLAWDEN_MESSAGE": "telegram:42",
        "CLAWDEN_TASK": "t-9",
        "CLAWDEN_ATTEMPT": "2",
    }
    second = decode_journal(journal.recv(65536))
    assert second["PRIORITY"] == "3"
    assert second["MESSAGE"].startswith("two\nlines\nTraceback")  # multi-line: the length-prefixed form
    assert "ValueError: boom" in second["MESSAGE"]


def test_lines_carry_the_same_fields_as_text_and_a_priority_prefix_for_a_journal_stream() -> None:
    record = logging.LogRecord("clawden.router", logging.INFO, __file__, 1, "routed %s", ("m1",), None)
    record.__dict__.update(logs.context("s-1", "main"))
    assert logs.PrefixFormatter(journal=True).format(record) == "<6>clawden.router: routed m1 session=s-1 group=main"
    line = logs.PrefixFormatter(journal=False).format(record)
    assert line.endswith(" I clawden.router: routed m1 session=s-1 group=main")


def test_setup_speaks_the_native_protocol_only_when_stderr_is_the_journal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setattr(logs, "JOURNAL_SOCKET", str(tmp_path / "absent"))
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logs.stderr_is_journal()
    journal_path = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(journal_path))
        monkeypatch.setattr(logs, "JOURNAL_SOCKET", str(journal_path))
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            logs.setup("clawden-vault")
            assert [type(h) for h in root.handlers] == [logs.JournalHandler]
            monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # someone else's stream: plain lines
            logs.setup("clawden-vault")
            assert [type(h) for h in root.handlers] == [logging.StreamHandler]
        finally:
            for handler in root.handlers[:]:
                root.removeHandler(handler)
                handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
