"""The headers the web app sends on every page are the ones `clawden doctor` looks for through a proxy."""

from __future__ import annotations

from clawden.cli import probes
from services.web.app import HEADERS


def test_the_doctor_looks_for_each_protective_header_the_app_sends() -> None:
    assert set(probes.PROTECTIVE_HEADERS) == set(HEADERS)  # one added to the app is then checked too
