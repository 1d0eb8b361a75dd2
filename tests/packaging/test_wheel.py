"""The wheel: built from a copy of this repo, it carries the unit templates and the agent image's build
context, and installed away from the checkout it finds them, renders units and hashes the agent sources
as the checkout does (so `clawden up` does not rebuild an image needlessly)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from clawden.cli import image, units

pytestmark = pytest.mark.process  # builds and installs a wheel

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCES = shutil.ignore_patterns(
    ".venv", ".git", ".ci", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)
STRAY = "container/clawden_agent/__pycache__/loop.cpython-311.pyc"  # what a checkout's test run leaves
DIST_INFO = f"clawden-{importlib.metadata.version('clawden')}.dist-info"
UNIT_TEMPLATES = [
    "units/systemd/clawden-router.service",
    "units/systemd/clawden-channel@.service",
    "units/systemd/clawden.target",
    "units/launchd/dev.clawden.router.plist",
]
BUILD_CONTEXT = [
    "container/Dockerfile",
    "container/bootstrap-base.sh",
    "container/clawden_agent/__init__.py",
    "container/clawden_agent/loop.py",
]

# Run by the installed wheel, outside the checkout: where things are found, the hash, and rendered units.
PROBE = """
import importlib.util, json, sys, tempfile
from pathlib import Path
import clawden
from clawden.cli import image, units
from clawden.resources import resource_dir

with tempfile.TemporaryDirectory() as tmp:
    image.write_sources(Path(tmp))
    digest = image.source_hash(Path(tmp))
args = json.loads(sys.argv[1])
inst = units.Install(**{k: Path(v) if k in args["paths"] else v for k, v in args["install"].items()})
print(json.dumps({
    "clawden": clawden.__file__,
    "container": str(resource_dir("container")), "units": str(resource_dir("units")),
    "top_level_agent": importlib.util.find_spec("clawden_agent") is not None,
    "source_hash": digest,
    "rendered": [[u.name, u.text] for u in units.systemd_units(inst) + units.launchd_plists(inst)],
}))
"""


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo as a fresh clone would have it, plus a bytecode cache in the agent code."""
    src = tmp_path_factory.mktemp("repo") / "clawden"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)
    (src / STRAY).parent.mkdir()
    (src / STRAY).write_bytes(b"stale")
    return src


def build(*target: str | Path, out: Path) -> Path:
    """`pip wheel` with this venv's setuptools: no build isolation, so nothing is downloaded."""
    setuptools = int(importlib.metadata.version("setuptools").split(".")[0])
    assert setuptools >= 77, "this venv's setuptools is too old for pyproject.toml: run `pip install -e '.[dev]'`"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        out,
        *target,
    )
    [wheel] = out.glob("clawden-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(source, out=tmp_path_factory.mktemp("dist"))


def test_wheel_carries_the_unit_templates_and_the_image_build_context(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"clawden/_resources/{path}" for path in UNIT_TEMPLATES + BUILD_CONTEXT} <= set(names)
    assert {n.split("/")[0] for n in names} == {"clawden", "services", DIST_INFO}  # no top-level clawden_agent
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_installed_wheel_finds_its_resources_and_renders_units_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--target",
        site,
        wheel,
    )
    checkout = units.Install(
        mode="user",
        home=tmp_path / "home",
        python=Path(sys.executable),
        user="nobody",
        group="nogroup",
        nats_server=tmp_path / "bin" / "nats-server",
        user_home=tmp_path,
    )
    paths = ["home", "python", "nats_server", "user_home"]
    install = {k: str(getattr(checkout, k)) for k in ["mode", "user", "group", *paths]}
    env = {**os.environ, "PYTHONPATH": str(site)}
    found = json.loads(
        run(sys.executable, "-c", PROBE, json.dumps({"install": install, "paths": paths}), cwd=tmp_path, env=env)
    )

    assert Path(found["clawden"]).is_relative_to(site)
    packaged = site / "clawden" / "_resources"
    assert (Path(found["container"]), Path(found["units"])) == (packaged / "container", packaged / "units")
    assert all((packaged / path).is_file() for path in UNIT_TEMPLATES + BUILD_CONTEXT)
    assert not found["top_level_agent"]

    # The same agent sources as the checkout's, hence the same image label: no rebuild after installing.
    with_checkout = tmp_path / "ctx"
    with_checkout.mkdir()
    image.write_sources(with_checkout)
    assert found["source_hash"] == image.source_hash(with_checkout)
    rendered = units.systemd_units(checkout) + units.launchd_plists(checkout)
    assert found["rendered"] == [[u.name, u.text] for u in rendered]

    # And the command a user runs, from the installed wheel.
    home = tmp_path / "home"
    clawden = (sys.executable, "-m", "clawden", "--home", home)
    run(*clawden, "init", cwd=tmp_path, env=env)
    shown = run(*clawden, "units", "show", "--user", cwd=tmp_path, env={**env, "HOME": str(tmp_path)})
    assert "clawden-router.service\n" in shown and f"CLAWDEN_HOME={home}" in shown


def test_sdist_carries_the_resources_so_a_wheel_built_from_it_has_them(source: Path, tmp_path: Path) -> None:
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    sdist = tmp_path / run(sys.executable, "-c", code, tmp_path, cwd=source).strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {*UNIT_TEMPLATES, *BUILD_CONTEXT, "setup.py", "MANIFEST.in"} <= names
    assert STRAY not in names

    wheel = build(sdist, out=tmp_path / "dist")
    assert f"clawden/_resources/{UNIT_TEMPLATES[0]}" in zipfile.ZipFile(wheel).namelist()
