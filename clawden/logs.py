"""Logging that journald reads well: native journal fields when stderr is the journal, else `<N>` lines."""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
LOG_FILE_VARIABLE = "CLAWDEN_LOG_FILE"  # set by `clawden up`: the file stderr is, rotated by its size
MAX_LOG_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3  # <file>.1 (newest) to <file>.3
# syslog priorities by logging level
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


# The journal fields Clawden writes, each `CLAWDEN_<NAME>` (`journalctl CLAWDEN_SESSION=s-…`), from
# the `extra=` keys the code logs with; any other extra key becomes CLAWDEN_<KEY> as it is.
FIELD_PREFIX = "CLAWDEN_"
FIELDS = {
    "service": "SERVICE",
    "session_id": "SESSION",
    "agent_group": "GROUP",
    "message_id": "MESSAGE",
    "task_id": "TASK",
}


def context(session_id: str = "", agent_group: str = "", message_id: str = "") -> dict[str, str]:
    """`log.info(..., extra=logs.context(session, group, message))`, leaving out what is unknown."""
    given = {"session_id": session_id, "agent_group": agent_group, "message_id": message_id}
    return {k: v for k, v in given.items() if v}


def extra_fields(record: logging.LogRecord) -> dict[str, str]:
    """`log.info(..., extra={"session_id": s})` -> {"SESSION": s}: CLAWDEN_SESSION in the journal."""
    out: dict[str, str] = {}
    for key, value in record.__dict__.items():
        if key in _STD_ATTRS or key.startswith("_"):
            continue
        name = FIELDS.get(key) or "".join(c if c.isalnum() else "_" for c in key.upper()).lstrip("_")
        if name:
            out[name] = str(value)
    return out


class PrefixFormatter(logging.Formatter):
    """For a stderr that journald reads: `<6>logger: message key=value`; human-friendly otherwise, with
    the date in front when the lines go to a file (a terminal needs only the time)."""

    def __init__(self, journal: bool, dated: bool = False) -> None:
        super().__init__()
        self.journal = journal
        self.dated = dated

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = extra_fields(record)
        if fields:
            message += " " + " ".join(f"{k.lower()}={v}" for k, v in fields.items())  # session=s-…
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return f"<{priority(record.levelno)}>{record.name}: {message}"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S" if self.dated else "%H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d} {record.levelname[0]} {record.name}: {message}"


class JournalHandler(logging.Handler):
    """The journal's native protocol: one datagram of KEY=VALUE fields per record."""

    def __init__(self, identifier: str, address: str = JOURNAL_SOCKET, service: str = "") -> None:
        super().__init__()
        self.identifier = identifier
        self.service = service or identifier.removeprefix("clawden-")
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            fields = {
                "MESSAGE": message,
                "PRIORITY": str(priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
                f"{FIELD_PREFIX}SERVICE": self.service,
                **{FIELD_PREFIX + k: v for k, v in extra_fields(record).items()},
            }
            self.sock.sendto(encode_journal_fields(fields), self.address)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def encode_journal_fields(fields: dict[str, str]) -> bytes:
    parts: list[bytes] = []
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:  # multi-line values use the length-prefixed binary form
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def stderr_is_journal(stream: TextIO = sys.stderr) -> bool:
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class RotatingStderr(logging.StreamHandler[TextIO]):
    """Under `clawden up` and launchd, stderr (and stdout) is the service's log file. Past `max_bytes` it
    becomes `<file>.1` (older ones move up to `.<backups>`, the oldest goes) and a fresh file takes their
    place, so what is printed without logging (a crash's traceback) lands in the current file too."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        super().__init__(sys.stderr)
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.fds = [fd for fd in (1, 2) if self.writes_to(path, fd)]

    @staticmethod
    def writes_to(path: str, fd: int = 2) -> bool:
        """Whether `fd` really is that file: never rename a file this process does not write."""
        try:
            st, mine = os.stat(path), os.fstat(fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if os.fstat(2).st_size >= self.max_bytes:
                self.rotate()
        except (OSError, ValueError):
            pass  # keep logging where we can
        super().emit(record)

    def rotate(self) -> None:
        self.flush()
        for n in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.path}.{n}"):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        sys.stdout.flush()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            for target in self.fds:
                os.dup2(fd, target)
        finally:
            os.close(fd)


def setup(identifier: str, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    journal = stderr_is_journal()
    log_file = os.environ.get(LOG_FILE_VARIABLE, "")
    handler: logging.Handler
    if journal and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler(identifier)
    elif not journal and log_file and RotatingStderr.writes_to(log_file):
        handler = RotatingStderr(log_file, MAX_LOG_BYTES, LOG_BACKUPS)
        handler.setFormatter(PrefixFormatter(journal=False, dated=True))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PrefixFormatter(journal, dated=not journal and not sys.stderr.isatty()))
    root.addHandler(handler)
    root.setLevel(os.environ.get("CLAWDEN_LOG_LEVEL", logging.getLevelName(level)).upper())
    logging.getLogger("nats").setLevel(logging.WARNING)
