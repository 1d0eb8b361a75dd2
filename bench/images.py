"""Per-group images (clawden/groupimage.py): how long `clawden groups packages add` takes to build a group's image
on the agent image with 1 and with 10 added Debian packages (each with its dependencies, gathered on the host
and installed with no network in the build), and a rebuild with no change, which the content hash makes a no-op.

Each build runs `--runs` times from nothing (its tag removed first); the packages come from this host's apt
cache or its installed copies, so no network is used.

    .venv/bin/python -m bench.images [--runs 3] [--base clawden-agent:latest] [--out bench/results/images.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import keep
from clawden import groupimage
from clawden.dockercli import docker
from clawden.packagespec import Packages, image_tag

GROUP = "bench-images"
ONE = ("jq",)
TEN = ("jq", "bc", "less", "zip", "unzip", "patch", "make", "file", "sqlite3", "lsof")


def timed_build(packages: Packages, base: str) -> tuple[float, bool]:
    started = time.perf_counter()
    _tag, built = groupimage.build(GROUP, packages, base=base, log=lambda _line: None)
    return time.perf_counter() - started, built


def measure(packages: Packages, base: str, runs: int) -> dict[str, Any]:
    """`runs` builds from nothing, then one with no change (the image is there: nothing is built)."""
    tag = image_tag(GROUP, groupimage.base_id(base), packages)
    seconds = []
    for _ in range(runs):
        docker(["docker", "image", "rm", "--force", tag])
        took, built = timed_build(packages, base)
        assert built, f"{tag} was not built"
        seconds.append(took)
    unchanged, built = timed_build(packages, base)
    assert not built, "an unchanged rebuild built"
    size = docker(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip()
    docker(["docker", "image", "rm", "--force", tag])
    return {
        "packages": list(packages.apt),
        "build_s": [round(s, 2) for s in seconds],
        "build_median_s": round(statistics.median(seconds), 2),
        "unchanged_s": round(unchanged, 3),
        "image_mb": round(int(size or 0) / 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", default=groupimage.BASE_TAG)
    parser.add_argument("--out", type=Path, default=Path("bench/results/images.json"))
    args = parser.parse_args()
    result = {
        "one": measure(Packages(apt=ONE), args.base, args.runs),
        "ten": measure(Packages(apt=TEN), args.base, args.runs),
    }
    keep(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
