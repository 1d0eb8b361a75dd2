"""Extra mounts for agent containers, allowed only through an allowlist file kept outside Clawden's
home and the project (`~/.config/clawden/mount-allowlist.json`), so an agent can never widen its own
view: links are resolved before any check, credential folders are always refused, and read-write
needs both the request and the allowlist to say so. No allowlist file means no extra mounts."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ALLOWLIST = Path("~/.config/clawden/mount-allowlist.json")
EXTRA_ROOT = "/workspace/extra"
# Never mounted, whatever the allowlist says: a path through one, or a folder holding one.
BLOCKED = frozenset(
    {
        ".ssh",
        ".gnupg",
        ".gpg",
        ".aws",
        ".azure",
        ".gcloud",
        ".kube",
        ".docker",
        ".config",
        "credentials",
        ".env",
        ".netrc",
        ".npmrc",
        ".pypirc",
        ".git-credentials",
        "id_rsa",
        "id_ed25519",
        "id_ecdsa",
        "private_key",
        ".secret",
        ".clawden",
    }
)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class MountRefused(ValueError):
    pass


@dataclass(frozen=True)
class AllowedRoot:
    path: Path
    read_write: bool = False


@dataclass(frozen=True)
class Allowlist:
    roots: tuple[AllowedRoot, ...]
    blocked: frozenset[str] = BLOCKED

    @classmethod
    def load(cls, path: Path = DEFAULT_ALLOWLIST) -> Allowlist:
        """`{"allowedRoots": [{"path": "~/Documents", "allowReadWrite": false}], "blockedPatterns": []}`."""
        file = path.expanduser()
        if not file.exists():
            return cls(roots=())
        data = json.loads(file.read_text())
        roots = tuple(
            AllowedRoot(Path(os.path.realpath(Path(r["path"]).expanduser())), bool(r.get("allowReadWrite")))
            for r in data.get("allowedRoots", [])
        )
        return cls(roots=roots, blocked=BLOCKED | frozenset(data.get("blockedPatterns", [])))


@dataclass(frozen=True)
class MountRequest:
    host: str
    name: str  # appears as /workspace/extra/<name>
    read_write: bool = False


@dataclass(frozen=True)
class ExtraMount:
    source: Path
    target: str
    read_only: bool


def resolve(request: MountRequest, allowlist: Allowlist) -> ExtraMount:
    """Check one requested mount; raises MountRefused saying why."""
    if not NAME.match(request.name) or request.name in (".", ".."):
        raise MountRefused(f"mount name {request.name!r} must be a plain name (letters, digits, . _ -)")
    asked = Path(request.host).expanduser()
    if not asked.is_absolute():
        raise MountRefused(f"{request.host}: the host path must be absolute")
    real = Path(os.path.realpath(asked))  # links and `..` resolved before anything is compared
    if not real.exists():
        raise MountRefused(f"{request.host} does not exist")
    for part in (*asked.parts, *real.parts):
        if part in allowlist.blocked:
            raise MountRefused(f"{request.host}: {part} holds credentials and is never mounted")
    if real.is_dir():
        held = sorted(allowlist.blocked.intersection(os.listdir(real)))
        if held:
            raise MountRefused(f"{request.host} contains {', '.join(held)}, which is never mounted")
    root = next((r for r in allowlist.roots if real == r.path or real.is_relative_to(r.path)), None)
    if root is None:
        raise MountRefused(f"{request.host} is not under an allowed root of the mount allowlist")
    return ExtraMount(real, f"{EXTRA_ROOT}/{request.name}", read_only=not (request.read_write and root.read_write))
