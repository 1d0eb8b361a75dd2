"""The runner's hang detector tells an agent waiting on a person from an agent that hangs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from clawden import sessiondb
from services.runner import core
from services.runner.service import _silence

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent.tools import declare_wait

HANG_TIMEOUT = 600.0


def session_silent_for(tmp_path: Path, seconds: float) -> Path:
    sessiondb.ensure_outbound(tmp_path)
    (tmp_path / sessiondb.HEARTBEAT).touch()
    then = time.time() - seconds
    os.utime(tmp_path / sessiondb.HEARTBEAT, (then, then))
    return tmp_path


def test_a_question_waiting_fifteen_minutes_is_not_a_hang(tmp_path: Path) -> None:
    folder = session_silent_for(tmp_path, 15 * 60)
    declare_wait(folder, "waiting for q-1", 3600)

    silent, tool_timeout = _silence(folder)
    allowed = core.allowed_silence(HANG_TIMEOUT, tool_timeout)

    assert silent > HANG_TIMEOUT and silent < allowed


def test_silence_with_no_declared_wait_is_a_hang_after_the_timeout(tmp_path: Path) -> None:
    folder = session_silent_for(tmp_path, 15 * 60)
    declare_wait(folder, "waiting for q-1", 3600)
    declare_wait(folder, None)  # answered: the wait is over

    silent, tool_timeout = _silence(folder)
    allowed = core.allowed_silence(HANG_TIMEOUT, tool_timeout)

    assert tool_timeout is None and allowed == HANG_TIMEOUT and silent > allowed
