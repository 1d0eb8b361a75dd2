"""The whole system for each module here, as in tests/e2e: real `clawden up`, real agent containers, the fake model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import Stack, start_stack


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, docker_client: object, agent_image: str
) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("home"))
    yield s
    s.stop()
