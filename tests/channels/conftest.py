"""Fixtures the Telegram tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.telegram import FakeTelegram
from tests.router.conftest import router as router_fixture


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    """A fresh fake Bot API server for the test."""
    f = FakeTelegram().start_in_thread()
    yield f
    f.stop_thread()


# The router as a real process, for the tests where a bridge and the router meet.
router = router_fixture
