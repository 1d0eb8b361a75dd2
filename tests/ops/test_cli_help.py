"""What `--help` names: the services `clawden run` and `up --service` take, as the runtime knows them."""

from __future__ import annotations

from clawden.cli.main import SERVICE_NAMES
from clawden.runtime import SERVICES


def test_the_help_names_every_service_the_runtime_runs() -> None:
    assert SERVICE_NAMES.split(", ") == list(SERVICES)
