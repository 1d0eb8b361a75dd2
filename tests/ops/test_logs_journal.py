"""`clawden logs` where units are installed: the journal of a real systemd (PID 1 in a container), read
through journalctl by unit and filtered by the CLAWDEN_SESSION field the services log with."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import docker
import pytest

from tests.units.machine import LABEL_INSTALL, booted

pytestmark = pytest.mark.docker

# What a service's records look like in the journal: clawden.logs under systemd, as `clawden run` sets it up.
SERVICE = """\
import logging
from clawden import logs
logs.setup("clawden-router")
log = logging.getLogger("clawden.router")
log.info("routed the first", extra={"session_id": "s-first"})
log.info("routed the second", extra={"session_id": "s-second"})
"""
UNIT = """\
[Unit]
PartOf=clawden.target
[Service]
Type=oneshot
ExecStart={python} {script}
"""


def test_a_units_journal_is_shown_by_service_and_by_session(tmp_path: Path, docker_client: docker.DockerClient) -> None:
    (tmp_path / "router.py").write_text(SERVICE)
    (tmp_path / "clawden-router.service").write_text(UNIT.format(python=sys.executable, script=tmp_path / "router.py"))
    (tmp_path / "clawden.target").write_text("[Unit]\nDescription=Clawden\n")
    install_id = f"l{secrets.token_hex(4)}"
    with booted(
        docker_client,
        f"clawden-ops-logs-{install_id}",
        labels={LABEL_INSTALL: install_id},
        volumes={str(tmp_path): {"bind": str(tmp_path), "mode": "ro"}},
    ) as machine:
        machine.sh(
            f"cp {tmp_path}/clawden.target {tmp_path}/clawden-router.service /etc/systemd/system/ && "
            "systemctl daemon-reload && systemctl start clawden-router.service && journalctl --sync"
        )
        clawden = f"{sys.executable} -m clawden --home {tmp_path}/home logs"

        everything = machine.sh(clawden)
        one = machine.sh(f"{clawden} router --session s-first -n 10")
        other = machine.sh(f"{clawden} channel@telegram")

    assert "routed the first" in everything and "routed the second" in everything
    assert "routed the first" in one and "routed the second" not in one
    assert "routed" not in other  # another unit's journal
