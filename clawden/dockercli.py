"""Asking the docker CLI about an image (is it there, what labels it carries): what `clawden up` and the
operator tools both need, without the image build itself."""

from __future__ import annotations

import json
import subprocess

# `docker run` of an image this machine holds, with no network: never a pull (the CLI's default pulls an image it
# does not find, and would run whatever a registry answered under that name).
RUN_LOCAL = ("docker", "run", "--rm", "--pull", "never", "--network", "none")


class DockerError(RuntimeError):
    """The docker CLI is missing, or an image could not be produced; the message is for a person."""


def docker(cmd: list[str], *, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except FileNotFoundError as exc:
        raise DockerError("the docker CLI is not installed") from exc


def image_exists(image: str) -> bool:
    return docker(["docker", "image", "inspect", image]).returncode == 0


def image_labels(image: str) -> dict[str, str] | None:
    """The image's labels, or None when the image does not exist."""
    result = docker(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", image])
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout or "null")
    return {str(k): str(v) for k, v in (labels or {}).items()}
