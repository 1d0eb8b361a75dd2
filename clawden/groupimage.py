"""Per-group agent images: `clawden-agent:<group>-<hash>`, the base image plus the Debian packages, npm packages and
Python wheels a group's agents were given, built with `--network none`. The host gathers every file the build
needs into its context first (Debian packages with their dependencies from the local apt cache, from a package
this host has installed, or with `apt-get download`; npm tarballs; wheels), so the build itself reaches nothing.
The tag's hash is over the base image's id and the package lists, so a rebuild with no change is a no-op; the
lists ride on the image as a label, so the image is its own record. A failed build leaves every image as it was.

The pure core (names, the tag, the labels, the Dockerfile) is clawden/packagespec.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec

from clawden.dockercli import RUN_LOCAL, DockerError, docker, image_labels
from clawden.packagespec import (
    BASE_LABEL,
    GROUP_LABEL,
    PACKAGES_LABEL,
    Packages,
    base_problem,
    dockerfile,
    has_browser,
    image_tag,
    labels_packages,
    problem,
)

BASE_TAG = "clawden-agent:latest"
APT_CACHES = (Path("/var/cache/apt/archives"),)
BUILD_TIMEOUT_S = 1800.0

Log = Callable[[str], object]


class BuildError(DockerError):
    """The group's image could not be built; the message says why, and the previous image is unchanged."""


# --- the host: gathering the context ----------------------------------------------------------------


def _run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, timeout=timeout)
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} is not installed on this host") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{' '.join(cmd[:3])} took longer than {timeout:g} s") from exc


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def base_id(base: str) -> str:
    """The base image's id (part of the group image's tag)."""
    result = docker(["docker", "image", "inspect", "--format", "{{.Id}}", base])
    if result.returncode != 0:
        raise BuildError(f"base image {base} is missing; build it with `clawden image build`")
    return result.stdout.strip()


def base_packages(base: str) -> tuple[set[str], str]:
    """The Debian packages the base image has installed, and its Debian codename."""
    script = "dpkg-query -W -f '${Package}\\n'; . /etc/os-release; echo \"codename=$VERSION_CODENAME\""
    cmd = [*RUN_LOCAL, "--user", "0:0", "--entrypoint", "sh", base, "-c", script]
    probe = docker(cmd)
    if probe.returncode != 0:
        raise BuildError(f"cannot list the packages of {base}: {_tail(probe.stderr)}")
    lines = probe.stdout.split()
    codename = next((line.partition("=")[2] for line in lines if line.startswith("codename=")), "")
    return {line for line in lines if "=" not in line}, codename


def base_status(base: str) -> str:
    """The base image's dpkg status file: what apt resolves the group's packages against."""
    cmd = [*RUN_LOCAL, "--entrypoint", "cat", base, "/var/lib/dpkg/status"]
    result = docker(cmd)
    if result.returncode != 0:
        raise BuildError(f"cannot read the Debian packages of {base}: {_tail(result.stderr)}")
    return result.stdout


def apt_resolve(names: tuple[str, ...], status: Path) -> list[str]:
    """The packages to add to an image whose dpkg status is `status`: apt's own resolver, simulated on this
    host's lists (Depends and Pre-Depends, one alternative each, no recommends), so a dependency the base
    meets, or meets with another alternative, is not added."""
    flags = ["-s", "--no-install-recommends", "-o", f"Dir::State::status={status}", "-o", "Debug::NoLocking=1"]
    result = _run(["apt-get", "install", *flags, *names])
    if unknown := re.findall(r"Unable to locate package (\S+)", result.stderr):
        known = "this host's apt knows no Debian package"
        raise BuildError(f"{known} {', '.join(unknown)} (check the name, or run apt-get update)")
    if result.returncode != 0:
        raise BuildError(f"apt cannot install {', '.join(names)} on the base: {_tail(result.stderr or result.stdout)}")
    return re.findall(r"^Inst (\S+)", result.stdout, re.MULTILINE)


def host_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    found = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.MULTILINE)
    return found.group(1) if found else ""


def fetch_deb(name: str, dest: Path, *, same_release: bool, caches: tuple[Path, ...]) -> str:
    """Put `name`'s .deb into `dest`; say where it came from."""
    for cache in caches:
        found = sorted(cache.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
        if found:
            shutil.copy2(found[-1], dest / found[-1].name)
            return f"{found[-1].name} from {cache}"
    if same_release and _installed_on_host(name) and _pristine_on_host(name):
        return repack(name, dest)
    result = _run(["apt-get", "download", name], cwd=dest)
    if result.returncode != 0:
        raise BuildError(f"cannot fetch the Debian package {name}: {_tail(result.stderr)}")
    return f"{name} with apt-get download"


def _installed_on_host(name: str) -> bool:
    result = _run(["dpkg-query", "-W", "-f", "${Status}", name])
    return result.returncode == 0 and result.stdout.endswith("install ok installed")


def _pristine_on_host(name: str) -> bool:
    """Every file of the package as Debian shipped it (`dpkg --verify` finds nothing): a configuration file the
    host's admin edited may hold the host's own secrets, and must never reach an agent's image."""
    result = _run(["dpkg", "--verify", name])
    return result.returncode == 0 and not result.stdout.strip()


# Control fields a package built again from this host's installed copy keeps (the status stanza has more).
_CONTROL_FIELDS = (
    "Package", "Source", "Version", "Architecture", "Maintainer", "Installed-Size", "Pre-Depends", "Depends",
    "Recommends", "Suggests", "Breaks", "Conflicts", "Replaces", "Provides", "Section", "Priority", "Multi-Arch",
    "Homepage", "Description",
)  # fmt: skip
_INFO_FILES = (
    "preinst", "postinst", "prerm", "postrm", "config", "templates",  # debconf's: fontconfig-config asks
    "triggers", "shlibs", "symbols", "conffiles", "md5sums",
)  # fmt: skip


def repack(name: str, dest: Path) -> str:
    """Build `name`'s .deb again from this host's installed copy (same Debian release as the base): its files
    as dpkg lists them, its control fields and maintainer scripts, as dpkg-repack does."""
    fields = "".join(f"{f}: ${{{f}}}\\n" for f in _CONTROL_FIELDS)
    control = _run(["dpkg-query", "-W", "-f", fields, name]).stdout
    listing = _run(["dpkg-query", "-L", name]).stdout.splitlines()
    with tempfile.TemporaryDirectory(prefix="clawden-repack-") as tmp:
        root = Path(tmp) / "root"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(_control_text(control))
        try:
            _copy_listed(listing, root)
            _copy_info(name, root / "DEBIAN")
        except OSError as exc:  # a file this user may not read: fetch the package instead
            raise BuildError(f"cannot pack {name} from this host ({exc}); put its .deb in the apt cache") from exc
        out = dest / f"{name}_repacked.deb"
        result = _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(out)])
        if result.returncode != 0:
            raise BuildError(f"cannot pack {name} from this host: {_tail(result.stderr)}")
    return f"{name} packed from this host's installed copy"


def _control_text(text: str) -> str:
    """The stanza without empty fields (dpkg-query prints every asked one)."""
    kept = [line for line in text.splitlines() if not re.match(r"^[A-Za-z-]+: ?$", line)]
    return "\n".join(kept) + "\n"


def _copy_listed(listing: list[str], root: Path) -> None:
    # A folder the package has files under is a folder in the package, even where this host made it a link
    # (merged /usr: /lib is usr/lib here, but dbus ships /lib/systemd/...).
    parents = {str(Path(entry).parent) for entry in listing}
    for entry in listing:
        src = Path(entry)
        if entry in ("/.", "") or not src.is_absolute():
            continue
        target = root / entry.lstrip("/")
        if src.is_symlink() and entry not in parents:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(src.readlink())
        elif src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _copy_info(name: str, debian: Path) -> None:
    info = Path("/var/lib/dpkg/info")
    arch = _run(["dpkg-query", "-W", "-f", "${Architecture}", name]).stdout.strip()
    for suffix in _INFO_FILES:
        for stem in (f"{name}:{arch}", name):
            src = info / f"{stem}.{suffix}"
            if src.is_file():
                shutil.copy2(src, debian / suffix)
                break


def fetch_apt(names: tuple[str, ...], dest: Path, base: str, codename: str, log: Log) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    same = bool(codename) and codename == host_codename()
    status = dest.parent / "base-dpkg-status"
    status.write_text(base_status(base))
    needed = apt_resolve(names, status)
    status.unlink()
    for name in needed:
        log(f"apt {name}: {fetch_deb(name, dest, same_release=same, caches=APT_CACHES)}")


def fetch_npm(specs: tuple[str, ...], dest: Path, log: Log) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        result = _run(["npm", "pack", "--silent", spec], cwd=dest)
        if result.returncode != 0:
            raise BuildError(f"npm pack {spec} failed: {_tail(result.stderr)}")
        log(f"npm {spec}: {result.stdout.strip()}")


def wheel_cache(python: str, machine: str) -> Path:
    """`$CLAWDEN_CACHE/wheels/group-py<version>-<machine>` (by default under ~/.cache/clawden): wheels fetched
    once, so a later build (and every test run after `bin/setup`) reaches no index."""
    root = os.environ.get("CLAWDEN_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "clawden") / "wheels" / f"group-py{python}-{machine}"


def fetch_pip(requirements: tuple[str, ...], dest: Path, base: str, log: Log) -> None:
    """Wheels for the base's Python (asked of the image) with their dependencies, and a requirements file: from
    the wheel cache when it holds them all, otherwise downloaded into the cache first."""
    dest.mkdir(parents=True, exist_ok=True)
    code = "import sys, platform; print('%d.%d' % sys.version_info[:2], platform.machine())"
    probe = docker([*RUN_LOCAL, "--entrypoint", "python3", base, "-c", code])
    if probe.returncode != 0:
        raise BuildError(f"cannot ask {base} for its Python: {_tail(probe.stderr)}")
    python, machine = probe.stdout.split()
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)] + [f"manylinux2014_{machine}"]
    flags = ["--only-binary=:all:", "--python-version", python, *(a for t in tags for a in ("--platform", t))]
    cache = wheel_cache(python, machine)
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", *flags, "--find-links", str(cache)]
    if _run([*cmd, "--no-index", "--dest", str(dest), *requirements]).returncode != 0:
        fetched = _run([*cmd, "--dest", str(cache), *requirements])
        if fetched.returncode != 0:
            raise BuildError(f"pip download {' '.join(requirements)} failed: {_tail(fetched.stderr)}")
        result = _run([*cmd, "--no-index", "--dest", str(dest), *requirements])
        if result.returncode != 0:
            raise BuildError(f"wheels for {' '.join(requirements)} are incomplete in {cache}: {_tail(result.stderr)}")
    (dest / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
    log(f"pip {', '.join(requirements)}: {len(list(dest.glob('*.whl')))} wheels")


# --- the host: building ---------------------------------------------------------------------------


def group_packages(image: str, group: str) -> Packages:
    """The packages `image` adds for `group` (none when it is not that group's image, or is missing)."""
    return labels_packages(image_labels(image) if image else None, group)


def build(group: str, packages: Packages, *, base: str = BASE_TAG, log: Log = print) -> tuple[str, bool]:
    """Build the group's image and return its tag and whether it was built now (False: it was already there).
    An empty set is the base itself. Raises BuildError, saying why, and leaves every image as it was."""
    if why := problem(packages):
        raise BuildError(why)
    if packages.empty():
        return base, False
    identity = base_id(base)
    tag = image_tag(group, identity, packages)
    if image_labels(tag) is not None:
        log(f"{tag} is current (same base, same packages): nothing to build")
        return tag, False
    _installed, codename = base_packages(base)
    with tempfile.TemporaryDirectory(prefix="clawden-group-image-") as tmp:
        ctx = Path(tmp)
        if packages.apt:
            fetch_apt(packages.apt, ctx / "debs", base, codename, log)
        if packages.npm:
            fetch_npm(packages.npm, ctx / "npm", log)
        if packages.pip:
            fetch_pip(packages.pip, ctx / "wheels", base, log)
        if has_browser(packages):
            shutil.copy2(Path(__file__).with_name("browse.py"), ctx / "browse.py")
        (ctx / "Dockerfile").write_text(dockerfile(packages))
        _docker_build(ctx, tag, base, identity, group, packages, log)
    log(f"built {tag} ({packages.words()})")
    return tag, True


def _docker_build(ctx: Path, tag: str, base: str, base_id: str, group: str, packages: Packages, log: Log) -> None:
    labels = {
        GROUP_LABEL: group,
        PACKAGES_LABEL: msgspec.json.encode(packages).decode(),
        BASE_LABEL: base_id,
    }
    cmd = ["docker", "build", "--network", "none", "--tag", tag, "--build-arg", f"BASE={base}"]
    cmd += [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    result = _run([*cmd, str(ctx)], timeout=BUILD_TIMEOUT_S)
    for line in result.stdout.splitlines()[-20:]:
        log(line)
    if result.returncode != 0:
        raise BuildError(f"the build of {tag} failed: {_tail(result.stderr or result.stdout, 8)}")


def rebuild(
    group: str, setting: str, runner_image: str, change: Callable[[Packages], Packages], *, log: Log = print
) -> tuple[str, Packages, bool]:
    """The group's packages changed by `change`, built on the runner's image: (the image to run, its packages,
    whether a build ran). The image is `runner_image` itself when no package is left. Raises BuildError."""
    labels = image_labels(setting) if setting else None
    if why := base_problem(group, setting, labels, runner_image):
        raise BuildError(why)
    packages = change(labels_packages(labels, group))
    tag, built = build(group, packages, base=runner_image, log=log)
    return tag, packages, built
