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

from clawden.cli.image import image_is_current

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
    if not image_is_current(AGENT_IMAGE):  # tests of the agent's code must run the code under test
        _unavailable(f"image {AGENT_IMAGE} was built from older sources; run `clawden image build`")
    return AGENT_IMAGE
