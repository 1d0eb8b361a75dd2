"""The agent image: its build context (no Docker needed) and a hardened run of the built image."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import docker
import pytest

from clawden.cli import image
from clawden.cli.image import WheelTarget

TARGET = WheelTarget(python="3.11", machine="x86_64", glibc="2.36")

# Each line of the probe's output is `key=value`.
PROBE = r"""
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
if touch /probe 2>/dev/null; then echo root_write=ok; else echo root_write=denied; fi
if touch /tmp/probe 2>/dev/null; then echo tmp_write=ok; else echo tmp_write=denied; fi
echo "pid1=$(cat /proc/1/comm)"
echo "claude=$(claude --version 2>&1 | head -n 1)"
if python -c 'import claude_agent_sdk, clawden_agent' 2>/tmp/import.err; then echo imports=ok;
else echo "imports=$(tail -n 1 /tmp/import.err)"; fi
"""


# --- the build context (fast, no Docker) --------------------------------------------------


def _fake_sdk_wheel(folder: Path) -> None:
    """A dependency-free stand-in for the SDK wheel, at the version image.py will ask for."""
    requirement = image.sdk_requirement()
    version = requirement.split("==")[1] if "==" in requirement else "0.0.1"
    folder.mkdir(parents=True, exist_ok=True)
    info = f"claude_agent_sdk-{version}.dist-info"
    with zipfile.ZipFile(folder / f"claude_agent_sdk-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr("claude_agent_sdk/__init__.py", "")
        metadata = f"Metadata-Version: 2.1\nName: claude-agent-sdk\nVersion: {version}\n"
        whl.writestr(f"{info}/METADATA", metadata)
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


@pytest.fixture
def context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLAWDEN_CACHE", str(tmp_path / "cache"))
    _fake_sdk_wheel(image.wheel_cache_dir(TARGET))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    image.assemble_context(ctx, TARGET, log=lambda line: None)
    return ctx


def test_context_layout(context: Path) -> None:
    assert (context / "Dockerfile").read_text() == (image.CONTAINER_DIR / "Dockerfile").read_text()
    assert [p.name for p in (context / "wheels").iterdir()] == [p.name for p in image.wheel_cache_dir(TARGET).iterdir()]
    assert (context / "app" / "clawden" / "__init__.py").read_text() == ""
    assert (context / "app" / "clawden" / "sessiondb.py").is_file()
    assert sorted(p.name for p in (context / "app" / "clawden").iterdir()) == ["__init__.py", "sessiondb.py"]
    agent = context / "app" / "clawden_agent"
    assert (agent / "__init__.py").is_file()
    expected = {p.name for p in (image.CONTAINER_DIR / "clawden_agent").glob("*.py")}
    assert expected <= {p.name for p in agent.glob("*.py")}
    assert not list(agent.rglob("__pycache__"))


def test_source_hash_tracks_app_and_dockerfile(context: Path) -> None:
    first = image.source_hash(context)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert image.source_hash(context) == first

    loop = context / "app" / "clawden_agent" / "loop.py"
    loop.write_text(loop.read_text() + "\n# changed\n" if loop.exists() else "# new\n")
    second = image.source_hash(context)
    assert second != first

    (context / "Dockerfile").write_text((context / "Dockerfile").read_text() + "\n# changed\n")
    assert image.source_hash(context) not in (first, second)

    # Wheels are not part of the hash.
    third = image.source_hash(context)
    (context / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"")
    assert image.source_hash(context) == third


def test_wheel_platforms_cover_the_base_glibc() -> None:
    platforms = TARGET.platforms()
    assert platforms[0] == "manylinux_2_36_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"} <= set(platforms)
    assert platforms[-1] == "linux_x86_64"
    assert TARGET.pip_flags()[:1] == ["--only-binary=:all:"]


# --- the built image, run hardened ---------------------------------------------------------


@pytest.fixture(scope="module")
def probe(docker_client: docker.DockerClient, agent_image: str) -> dict[str, str]:
    container = docker_client.containers.run(
        agent_image,
        ["sh", "-c", PROBE],
        detach=True,
        network_mode="none",
        read_only=True,
        tmpfs={"/tmp": "rw,size=64m,mode=1777"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        mem_limit="512m",
        pids_limit=256,
        labels={"dev.clawden.test": "test_image"},
    )
    try:
        status = container.wait(timeout=120)
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    assert status["StatusCode"] == 0, output
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.mark.docker
def test_runs_as_agent_user(probe: dict[str, str]) -> None:
    assert probe["uid"] == "1000"
    assert probe["gid"] == "1000"


@pytest.mark.docker
def test_only_loopback(probe: dict[str, str]) -> None:
    assert probe["net"].split() == ["lo"]


@pytest.mark.docker
def test_root_is_read_only_and_tmp_is_writable(probe: dict[str, str]) -> None:
    assert probe["root_write"] == "denied"
    assert probe["tmp_write"] == "ok"


@pytest.mark.docker
def test_tini_is_pid_1(probe: dict[str, str]) -> None:
    assert probe["pid1"] == "tini"


@pytest.mark.docker
def test_claude_cli_runs(probe: dict[str, str]) -> None:
    assert re.search(r"\d+\.\d+\.\d+", probe["claude"]), probe["claude"]


@pytest.mark.docker
def test_sdk_and_agent_import(probe: dict[str, str]) -> None:
    assert probe["imports"] == "ok"
