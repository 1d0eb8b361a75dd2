"""Docker fixtures: a pinged engine client and the locally built agent image.

Both skip when Docker or the image is missing, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import docker
import pytest
from docker.errors import DockerException, ImageNotFound
from testcontainers.core.container import DockerContainer

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


OWNER_LABEL = "dev.clawden.test-owner"


def _process_identity(pid: int) -> str | None:
    """`pid:start-time`: a process id the kernel may reuse, made unique by when the process started."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid}:{stat.rpartition(')')[2].split()[19]}"  # field 22, counted after the command name


def owned_test_server(client: docker.DockerClient, image: str, **run: object) -> DockerContainer:
    """A test server container labelled with this test process, after removing any whose test process is gone
    (a SIGKILLed pytest never reaches its fixtures' `stop()`, and Synapse and the mail server would live on)."""
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        owner = container.labels.get(OWNER_LABEL, "")
        pid = owner.partition(":")[0]
        if not pid.isdigit() or _process_identity(int(pid)) != owner:
            container.remove(force=True)
    return DockerContainer(image).with_kwargs(**run, labels={OWNER_LABEL: _process_identity(os.getpid()) or ""})
