"""Processes a test started, seen from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Whether process `pid` is alive: there, and not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
