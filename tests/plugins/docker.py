"""Docker fixtures: a pinged engine client and the locally built agent image.

Both skip when Docker or the image is missing, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import docker
import pytest
from docker.errors import DockerException, ImageNotFound

AGENT_IMAGE = "clawden-agent:latest"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, OSError) as exc:  # requests' errors are OSErrors
        _unavailable(f"no Docker engine: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def agent_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(AGENT_IMAGE)
    except ImageNotFound:
        _unavailable(f"image {AGENT_IMAGE} is missing; run `clawden image build`")
    return AGENT_IMAGE
