"""What a group's own image adds to the base (Debian packages, npm packages, Python wheels), pure: the names a
request may give, the image's tag (a hash of the base's id and the packages, so the same inputs give the same
tag), the packages an image's labels record, and the Dockerfile that installs them from the build context alone.
The host's side (fetching, `docker build`) is clawden/groupimage.py."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable

import msgspec

REPOSITORY = "clawden-agent"
GROUP_LABEL = "dev.clawden.group"
PACKAGES_LABEL = "dev.clawden.packages"
BASE_LABEL = "dev.clawden.group-base"
MAX_PACKAGES = 64  # of each kind
APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,99}$")  # Debian policy 5.6.1
NPM_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._-]{0,99}/)?[a-z0-9][a-z0-9._-]{0,99}(@[A-Za-z0-9.^~<>=*+-]{1,64})?$")
PIP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[A-Za-z0-9,._-]{1,100}\])?(==[A-Za-z0-9.*+!-]{1,64})?$")
KINDS = ("apt", "npm", "pip")
BROWSE_HELPER = "/usr/local/bin/clawden-browse"


class Packages(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a group's image adds to the base: Debian package names, npm specs, pip requirements."""

    apt: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()

    def plus(self, other: Packages) -> Packages:
        return Packages(*(tuple(sorted({*getattr(self, k), *getattr(other, k)})) for k in KINDS))

    def minus(self, other: Packages) -> Packages:
        return Packages(*(tuple(n for n in getattr(self, k) if n not in getattr(other, k)) for k in KINDS))

    def missing(self, other: Packages) -> Packages:
        """What of `other` this set does not hold."""
        return Packages(*(tuple(n for n in getattr(other, k) if n not in getattr(self, k)) for k in KINDS))

    def empty(self) -> bool:
        return not (self.apt or self.npm or self.pip)

    def words(self) -> str:
        """`apt jq, curl; pip requests`: for a person."""
        return "; ".join(f"{k} {', '.join(getattr(self, k))}" for k in KINDS if getattr(self, k)) or "nothing"


# A browser for the agent: Debian's Chromium (with a font, certutil for the vault CA's NSS trust, and
# libatomic1 for Playwright's bundled node) and
# Playwright's Python package, which drives that system browser (no browser download). With both in the
# image, the Dockerfile adds BROWSE_HELPER (clawden/browse.py).
BROWSER = Packages(apt=("chromium", "fonts-liberation", "libatomic1", "libnss3-tools"), pip=("playwright",))


def has_browser(packages: Packages) -> bool:
    return not packages.missing(BROWSER).apt and not packages.missing(BROWSER).pip


# --- the pure core ----------------------------------------------------------------------------------


def problem(packages: Packages) -> str:
    """Why these packages cannot be asked for ("" when they can): names only, never options or paths."""
    rules = {"apt": APT_NAME, "npm": NPM_NAME, "pip": PIP_NAME}
    for kind in KINDS:
        names = getattr(packages, kind)
        if len(names) > MAX_PACKAGES:
            return f"at most {MAX_PACKAGES} {kind} packages, not {len(names)}"
        if bad := next((n for n in names if not rules[kind].match(n)), None):
            return f"{bad!r} is not a {kind} package name"
    return ""


def tag_name(group: str) -> str:
    """The group's name as a Docker tag may hold it (lowercase letters, digits, `_.-`)."""
    return re.sub(r"[^a-z0-9_.-]", "-", group.lower())[:60].strip(".-") or "group"


def image_tag(group: str, base_id: str, packages: Packages) -> str:
    """`clawden-agent:<group>-<hash>`: the same base and the same packages give the same tag."""
    key = json.dumps([base_id, msgspec.to_builtins(packages), DOCKERFILE_VERSION], sort_keys=True)
    return f"{REPOSITORY}:{tag_name(group)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def labels_packages(labels: dict[str, str] | None, group: str) -> Packages:
    """The packages an image built for `group` carries; none for another image (the base, another group's)."""
    if not labels or labels.get(GROUP_LABEL) != group:
        return Packages()
    try:
        return msgspec.json.decode(labels.get(PACKAGES_LABEL, "{}"), type=Packages)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Packages()


def apt_needed(closure: Iterable[str], installed: set[str]) -> list[str]:
    """The Debian packages to put in the build: the dependency closure less what the base has. `apt-cache
    depends` shows a virtual package as `<name>`; a real one providing it is in the closure too."""
    return sorted({n for n in closure if n and not n.startswith("<") and n.split(":")[0] not in installed})


DOCKERFILE_VERSION = 2  # part of the tag: a change of the recipe below builds anew

# apt, not `dpkg -i`, orders the files by their pre-dependencies (systemd before systemd-sysv); with no
# source list it has nowhere to fetch from but these files (and the build has no network); debconf asks nothing.
_APT_STEP = """COPY debs/ /tmp/clawden-debs/
RUN DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends \\
        -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null /tmp/clawden-debs/*.deb \\
    && rm -rf /tmp/clawden-debs
"""
_NPM_STEP = """COPY npm/ /tmp/clawden-npm/
RUN command -v npm >/dev/null \\
        || { echo "npm packages need node and npm in the image: add --apt nodejs --apt npm" >&2; exit 1; }; \\
    npm install --global --offline --no-audit --no-fund /tmp/clawden-npm/*.tgz && rm -rf /tmp/clawden-npm
"""
_PIP_STEP = """COPY wheels/ /tmp/clawden-wheels/
RUN /opt/agent/bin/pip freeze > /tmp/clawden-agent-pins.txt \\
    && /opt/agent/bin/pip install --no-cache-dir --no-index --find-links /tmp/clawden-wheels \\
        -c /tmp/clawden-agent-pins.txt -r /tmp/clawden-wheels/requirements.txt \\
    && rm -rf /tmp/clawden-wheels /tmp/clawden-agent-pins.txt
"""

_BROWSE_STEP = f"""COPY browse.py {BROWSE_HELPER}
RUN chmod 0755 {BROWSE_HELPER}
"""


def dockerfile(packages: Packages) -> str:
    """The recipe: each kind installed from the context alone, as root, then back to the agent's user. pip
    installs into the agent's venv held to what it has (`pip freeze` as constraints), so nothing the agent
    runner uses changes; a wheel that would change one fails the build instead."""
    steps = [_APT_STEP if packages.apt else "", _NPM_STEP if packages.npm else "", _PIP_STEP if packages.pip else ""]
    steps.append(_BROWSE_STEP if has_browser(packages) else "")
    return "ARG BASE\nFROM ${BASE}\nUSER 0:0\n" + "".join(steps) + "USER 1000:1000\n"


def base_problem(group: str, setting: str, labels: dict[str, str] | None, runner_image: str) -> str:
    """A group that runs an image of its own (not one built here for it) keeps it: packages are built on the
    runner's image, and would silently replace it."""
    if setting and setting != runner_image and (labels or {}).get(GROUP_LABEL) != group:
        return (
            f"agent group {group} runs its own image {setting}; packages are built on {runner_image}."
            f" Clear its image first: clawden groups update {group} --image ''"
        )
    return ""
