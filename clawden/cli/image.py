"""Build the clawden-agent image without a registry: a pulled or Debian-bootstrapped base, wheels
downloaded on the host, the agent code, and a source-hash label that tells when to rebuild."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import clawden
from clawden.dockercli import RUN_LOCAL, DockerError, docker
from clawden.dockercli import image_exists as image_exists
from clawden.dockercli import image_labels as image_labels
from clawden.resources import resource_dir

DEFAULT_TAG = "clawden-agent:latest"
DEFAULT_BASE = "python:3.11-slim-bookworm"
BOOTSTRAP_BASE = "clawden-base:bookworm"
SOURCE_HASH_LABEL = "dev.clawden.source-hash"
SDK_DIST = "claude-agent-sdk"
SYSTEM_PACKAGES = ("git", "curl", "ca-certificates", "tini")  # as in container/Dockerfile
CONTAINER_DIR = resource_dir("container")  # Dockerfile, bootstrap-base.sh, clawden_agent/
SESSIONDB = Path(clawden.__file__).resolve().parent / "sessiondb.py"
PULL_TIMEOUT_S = 300.0

Log = Callable[[str], object]


# The agent image (or its base, or its wheels) could not be produced, or the docker CLI is missing.
ImageBuildError = DockerError


@dataclass(frozen=True)
class WheelTarget:
    """The interpreter and platform inside the base image that the wheels must fit."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str | None  # "2.36", or None when the base's libc is not glibc

    @property
    def cache_key(self) -> str:
        return f"cp{self.python.replace('.', '')}-{self.machine}"

    def pip_flags(self) -> list[str]:
        flags = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python]
        flags += ["--abi", f"cp{self.python.replace('.', '')}"]
        for platform in self.platforms():
            flags += ["--platform", platform]
        return flags

    def platforms(self) -> list[str]:
        """Platform tags, most specific first (pip does not expand `manylinux_2_X` by itself)."""
        newest = int(self.glibc.split(".")[1]) if self.glibc else 17
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(max(newest, 17), 4, -1)]
        tags += [f"manylinux{alias}_{self.machine}" for alias in ("2014", "2010", "1")]
        return [*tags, f"linux_{self.machine}"]


def build_agent_image(
    tag: str = DEFAULT_TAG,
    base: str | None = None,
    *,
    force_base: bool = False,
    log: Log = print,
    network: str | None = None,
) -> str:
    """Build the agent image and return its tag.

    With no `base`, use python:3.11-slim-bookworm when it is present or pullable, otherwise
    bootstrap clawden-base:bookworm from Debian packages. `force_base` rebuilds that bootstrapped
    base and builds on it. The build runs with `--network none` unless the base lacks system
    packages that apt must fetch (or `network` says otherwise).
    """
    base_image = resolve_base(base, force_base=force_base, log=log)
    target = probe_base(base_image)
    log(f"base {base_image}: python {target.python}, {target.machine}, glibc {target.glibc}")
    if network is None:
        network = build_network(base_image, log=log)
    with tempfile.TemporaryDirectory(prefix="clawden-image-") as tmp:
        ctx = Path(tmp)
        assemble_context(ctx, target, log=log)
        digest = source_hash(ctx)
        docker_build(ctx, tag=tag, base=base_image, digest=digest, network=network, log=log)
    log(f"built {tag} ({SOURCE_HASH_LABEL}={digest[:12]})")
    return tag


def image_is_current(tag: str = DEFAULT_TAG) -> bool:
    """True when `tag` exists and was built from the current Dockerfile and app sources."""
    labels = image_labels(tag)
    if labels is None:
        return False
    with tempfile.TemporaryDirectory(prefix="clawden-hash-") as tmp:
        ctx = Path(tmp)
        write_sources(ctx)
        return labels.get(SOURCE_HASH_LABEL) == source_hash(ctx)


# --- the build context --------------------------------------------------------------------


def assemble_context(ctx: Path, target: WheelTarget, *, log: Log = print) -> None:
    """Fill `ctx` with the Dockerfile, `app/` and `wheels/`."""
    write_sources(ctx)
    fetch_wheels(ctx / "wheels", target, log=log)


def write_sources(ctx: Path) -> None:
    """Write the Dockerfile and `app/` (clawden.sessiondb plus the clawden_agent package)."""
    shutil.copy2(CONTAINER_DIR / "Dockerfile", ctx / "Dockerfile")
    write_constraints(ctx / "constraints.txt")
    clawden = ctx / "app" / "clawden"
    clawden.mkdir(parents=True, exist_ok=True)
    (clawden / "__init__.py").write_text("")
    if SESSIONDB.is_file():
        shutil.copy2(SESSIONDB, clawden / "sessiondb.py")
    else:
        (clawden / "sessiondb.py").write_text("")
    agent = ctx / "app" / "clawden_agent"
    copy_python_tree(CONTAINER_DIR / "clawden_agent", agent)
    (agent / "__init__.py").touch()


def copy_python_tree(src: Path, dest: Path) -> None:
    """Copy the .py files under `src` (skipping caches) to `dest`, keeping the layout."""
    dest.mkdir(parents=True, exist_ok=True)
    if not src.is_dir():
        return
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)


def source_hash(ctx: Path) -> str:
    """SHA-256 over the Dockerfile, the constraints and every file under `app/` (paths and contents)."""
    digest = hashlib.sha256()
    app = sorted(p for p in (ctx / "app").rglob("*") if p.is_file())
    for path in [ctx / "Dockerfile", ctx / "constraints.txt", *app]:
        digest.update(path.relative_to(ctx).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --- wheels -------------------------------------------------------------------------------


def wheel_cache_dir(target: WheelTarget) -> Path:
    """`$CLAWDEN_CACHE/wheels/<target>`, by default under ~/.cache/clawden."""
    root = os.environ.get("CLAWDEN_CACHE")
    cache_root = Path(root) if root else Path.home() / ".cache" / "clawden"
    return cache_root / "wheels" / target.cache_key


def sdk_requirement() -> str:
    """Pin the SDK to the host's version when the host has it, so both sides match."""
    try:
        return f"{SDK_DIST}=={importlib.metadata.version(SDK_DIST)}"
    except importlib.metadata.PackageNotFoundError:
        return SDK_DIST


# Versions the agent image holds to, whatever the newest is. mcp 2.x builds its protocol models for two
# schema versions when imported: `import claude_agent_sdk` took 0.83 CPU-s with mcp 2.3 and 0.48 with
# mcp 1.30, on every container start (the SDK supports both majors, see its _mcp_compat).
AGENT_CONSTRAINTS = ("mcp>=1.23,<2",)


def write_constraints(path: Path) -> Path:
    path.write_text("".join(f"{c}\n" for c in AGENT_CONSTRAINTS))
    return path


def fetch_wheels(dest: Path, target: WheelTarget, *, log: Log = print) -> None:
    """Put the SDK and its dependencies into `dest`, downloading only what the cache lacks."""
    cache = wheel_cache_dir(target)
    cache.mkdir(parents=True, exist_ok=True)
    requirement = sdk_requirement()
    if pip_download(requirement, dest, target, find_links=[cache], offline=True) == 0:
        log(f"wheels for {requirement}: all from cache {cache}")
        return
    log(f"wheels for {requirement}: downloading into {cache}")
    seed_cache(cache, requirement, log=log)
    if pip_download(requirement, cache, target, find_links=[cache], offline=False, log=log) != 0:
        raise ImageBuildError(f"pip download of {requirement} for {target} failed")
    if pip_download(requirement, dest, target, find_links=[cache], offline=True, log=log) != 0:
        raise ImageBuildError(f"wheels for {requirement} are still incomplete in {cache}")


def seed_cache(cache: Path, requirement: str, *, log: Log) -> None:
    """Copy SDK wheels found in $CLAWDEN_WHEELHOUSE folders into the cache.

    pip skips downloading a file whose name is already in its destination, so a seeded SDK wheel
    (the big one: it carries the CLI) is never fetched again.
    """
    version = requirement.partition("==")[2] or "*"
    pattern = f"{SDK_DIST.replace('-', '_')}-{version}-*.whl"
    folders = [Path(p) for p in os.environ.get("CLAWDEN_WHEELHOUSE", "").split(os.pathsep) if p]
    for wheel in (w for folder in folders for w in sorted(folder.glob(pattern))):
        if not (cache / wheel.name).exists():
            log(f"reusing {wheel}")
            shutil.copy2(wheel, cache / wheel.name)


def pip_download(
    requirement: str,
    dest: Path,
    target: WheelTarget,
    *,
    find_links: Sequence[Path],
    offline: bool,
    log: Log | None = None,
) -> int:
    """Run `pip download` for `target` into `dest` (emptied first when offline); return its code."""
    if offline and dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--dest", str(dest)]
    cmd += [arg for link in find_links for arg in ("--find-links", str(link))]
    cmd += ["--no-index"] if offline else []
    constraints = write_constraints(dest.parent / f".{dest.name}-constraints.txt")
    cmd += ["--constraint", str(constraints), *target.pip_flags(), requirement]
    if log is None:
        return subprocess.run(cmd, capture_output=True, check=False).returncode
    return run_logged(cmd, log)


# --- docker -------------------------------------------------------------------------------


def resolve_base(base: str | None, *, force_base: bool, log: Log) -> str:
    """Pick the base image, pulling or bootstrapping it when needed."""
    if force_base:
        if base not in (None, BOOTSTRAP_BASE):
            raise ValueError(f"force_base rebuilds {BOOTSTRAP_BASE}; it cannot apply to {base}")
        bootstrap_base(force=True, log=log)
        return BOOTSTRAP_BASE
    if base == BOOTSTRAP_BASE:
        bootstrap_base(force=False, log=log)
        return base
    if base is not None:
        if image_exists(base) or pull(base, log=log):
            return base
        raise ImageBuildError(f"base image {base} is neither present nor pullable")
    for candidate in (DEFAULT_BASE, BOOTSTRAP_BASE):
        if image_exists(candidate):
            return candidate
    if pull(DEFAULT_BASE, log=log):
        return DEFAULT_BASE
    log(f"cannot pull {DEFAULT_BASE}; bootstrapping {BOOTSTRAP_BASE} from Debian packages")
    bootstrap_base(force=False, log=log)
    return BOOTSTRAP_BASE


def bootstrap_base(*, force: bool, log: Log) -> None:
    """Run container/bootstrap-base.sh (debootstrap needs root, so go through sudo if needed)."""
    cmd = ["bash", str(CONTAINER_DIR / "bootstrap-base.sh"), "--tag", BOOTSTRAP_BASE]
    cmd += ["--force"] if force else []
    if os.geteuid() != 0:
        cmd = ["sudo", *cmd]
    if run_logged(cmd, log) != 0:
        raise ImageBuildError(f"bootstrapping {BOOTSTRAP_BASE} failed")


def probe_base(base: str) -> WheelTarget:
    """Ask the base image for its Python version, machine and glibc version."""
    code = (
        "import platform, sys; lib, ver = platform.libc_ver(); "
        "print('%d.%d' % sys.version_info[:2], platform.machine(), ver if lib == 'glibc' else '-')"
    )
    cmd = [*RUN_LOCAL, "--entrypoint", "python3", base, "-c", code]
    result = docker(cmd)
    if result.returncode != 0:
        raise ImageBuildError(f"cannot run python3 in {base}: {result.stderr.strip()}")
    python, machine, glibc = result.stdout.split()
    return WheelTarget(python=python, machine=machine, glibc=None if glibc == "-" else glibc)


def build_network(base: str, *, log: Log) -> str:
    """ "none", unless the base lacks system packages, which the Dockerfile then installs via apt."""
    check = " ".join(
        f"dpkg-query -W -f='${{Status}}' {pkg} 2>/dev/null | grep -q 'ok installed' || echo {pkg};"
        for pkg in SYSTEM_PACKAGES
    )
    result = docker([*RUN_LOCAL, "--entrypoint", "sh", base, "-c", check])
    if result.returncode != 0:
        raise ImageBuildError(f"cannot inspect the packages of {base}: {result.stderr.strip()}")
    missing = result.stdout.split()
    if not missing:
        return "none"
    log(f"{base} lacks {', '.join(missing)}: building with the default network so apt can fetch them")
    return "default"


def docker_build(ctx: Path, *, tag: str, base: str, digest: str, network: str, log: Log) -> None:
    """`docker build` the context, streaming its output to `log`."""
    cmd = ["docker", "build", "--network", network, "--tag", tag, "--build-arg", f"BASE={base}"]
    cmd += ["--label", f"{SOURCE_HASH_LABEL}={digest}", str(ctx)]
    if run_logged(cmd, log) != 0:
        raise ImageBuildError(f"docker build of {tag} failed")


def pull(image: str, *, log: Log) -> bool:
    log(f"pulling {image}")
    try:
        result = docker(["docker", "pull", image], timeout=PULL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"pull of {image} timed out")
        return False
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"pull of {image} failed: {reason}")
    return result.returncode == 0


def run_logged(cmd: list[str], log: Log) -> int:
    """Run `cmd`, passing each line of its combined output to `log`; return the exit code."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{cmd[0]} is not installed") from exc
    assert proc.stdout is not None
    for line in proc.stdout:
        log(line.rstrip("\n"))
    return proc.wait()
