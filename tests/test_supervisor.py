"""`clawden up`: which children it restarts."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from clawden import config, setup
from clawden.supervisor import Supervisor
from tests.conftest import NatsServer


def test_a_service_that_cannot_run_as_configured_is_not_restarted(
        tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.init(tmp_path)
    (tmp_path / "config.toml").write_text(f'[nats]\nurl = "{nats_server.url}"\n')
    monkeypatch.delenv("CLAWDEN_TELEGRAM_TOKEN", raising=False)
    out = io.StringIO()
    sup = Supervisor(config.load(tmp_path), ("channel@telegram",), out=out)
    try:
        deadline = time.monotonic() + 30
        while "cannot run as configured" not in out.getvalue():
            assert time.monotonic() < deadline, out.getvalue()
            sup.poll()
            time.sleep(0.05)
        for _ in range(20):  # a crash would be restarted within half a second
            sup.poll()
            time.sleep(0.05)
        assert sup.children[0].proc is None and out.getvalue().count(" pid ") == 1, out.getvalue()
        assert "no telegram token" in sup.children[0].log_path.read_text()
    finally:
        sup.stop()
