"""Build `clawden-synapse:test`, the Synapse the Matrix tests run, the way the agent image is built: on the
Debian-bootstrapped base, from wheels downloaded on the host into the build context, with `--network none`.

`python -m tests.servers.synapse.build` (bin/setup --tests runs it); it does nothing when the image is current.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

from clawden.cli import image

TAG = "clawden-synapse:test"
REQUIREMENT = "matrix-synapse==1.163.2"
HERE = Path(__file__).resolve().parent


def source_hash() -> str:
    return hashlib.sha256((HERE / "Dockerfile").read_bytes() + REQUIREMENT.encode()).hexdigest()


def is_current(tag: str = TAG) -> bool:
    labels = image.image_labels(tag)
    return labels is not None and labels.get(image.SOURCE_HASH_LABEL) == source_hash()


def fetch_wheels(dest: Path, target: image.WheelTarget) -> None:
    """Synapse and its dependencies into `dest`, downloading only what the cache lacks."""
    cache = image.wheel_cache_dir(target).with_name(f"synapse-{target.cache_key}")
    cache.mkdir(parents=True, exist_ok=True)
    if image.pip_download(REQUIREMENT, dest, target, find_links=[cache], offline=True) == 0:
        print(f"wheels for {REQUIREMENT}: all from cache {cache}")
        return
    print(f"wheels for {REQUIREMENT}: downloading into {cache}")
    if image.pip_download(REQUIREMENT, cache, target, find_links=[cache], offline=False, log=print) != 0:
        raise image.ImageBuildError(f"pip download of {REQUIREMENT} failed")
    if image.pip_download(REQUIREMENT, dest, target, find_links=[cache], offline=True, log=print) != 0:
        raise image.ImageBuildError(f"wheels for {REQUIREMENT} are still incomplete in {cache}")


def build(tag: str = TAG) -> str:
    if is_current(tag):
        print(f"{tag} is current")
        return tag
    image.bootstrap_base(force=False, log=print)
    target = image.probe_base(image.BOOTSTRAP_BASE)
    with tempfile.TemporaryDirectory(prefix="clawden-synapse-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(HERE / "Dockerfile", ctx / "Dockerfile")
        fetch_wheels(ctx / "wheels", target)
        cmd = [
            "docker",
            "build",
            "--network",
            "none",
            "--tag",
            tag,
            "--build-arg",
            f"BASE={image.BOOTSTRAP_BASE}",
            "--label",
            f"{image.SOURCE_HASH_LABEL}={source_hash()}",
            str(ctx),
        ]
        if image.run_logged(cmd, print) != 0:
            raise image.ImageBuildError(f"docker build of {tag} failed")
    print(f"built {tag}")
    return tag


if __name__ == "__main__":
    try:
        build()
    except image.ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
