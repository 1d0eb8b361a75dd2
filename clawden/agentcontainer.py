"""An agent container as the agent runner inside it sees it: where the host's folders are mounted, the
environment it reads, and the user it runs as. The runner makes agent containers from these;
`clawden doctor` makes one like them to check the gateway CA's trust."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from clawden.vaultfiles import BUNDLE_FILE, CA_FILE, SOCKET_NAME

SESSION_MOUNT = "/workspace/session"
GROUP_MOUNT = "/workspace/agent"
GLOBAL_MOUNT = "/workspace/global"
# The skills a group's containers get, each mounted read-only at .claude/skills/<name>: Claude Code loads
# the skills of a folder it is given with --add-dir, so only these reach the agent.
SKILLS_MOUNT = "/workspace/skills"
HOME_MOUNT = "/home/agent"  # the session's own Claude Code home (its conversations), never shared
CACHE_MOUNT = "/run/clawden/cache"  # the group's, shared by its sessions: what a container may remember
PROJECT_SETTINGS = ".claude"  # in the group folder, mounted read-only over the writable folder
GATEWAY_MOUNT = "/run/clawden/gateway"
VaultTransport = Literal["socket", "tcp"]
DOCKER_DESKTOP = "Docker Desktop"  # `docker info`'s OperatingSystem there (macOS, Windows with WSL2)
# The relay's own folder (vault_transport = "tcp"), read-write: it takes the container's token from it and
# deletes it before the agent starts (container/clawden_agent/relay.py).
RELAY_MOUNT = "/run/clawden/relay"
TRUST_MOUNT = "/run/clawden/trust"  # the vault's CA and a bundle of it with the system roots, read-only
# The session's admin socket folder (services/runner/admin.py), read-only: the in-container `clawden` asks there.
ADMIN_MOUNT = "/run/clawden/admin"
RELAY_PORT = 3128
AGENT_UID = 1000


@dataclass(frozen=True)
class Tuning:
    """How the agent works, per group; "" or 0 leaves the agent runner's own default."""

    max_turns: int = 0
    turn_budget: float = 0.0
    effort: str = ""
    max_messages_per_prompt: int = 0
    assistant_name: str = ""

    def environment(self) -> dict[str, str]:
        env = {
            "CLAWDEN_MAX_TURNS": str(self.max_turns) if self.max_turns else "",
            "CLAWDEN_TURN_BUDGET": f"{self.turn_budget:g}" if self.turn_budget else "",
            "CLAWDEN_EFFORT": self.effort,
            "CLAWDEN_MAX_MESSAGES_PER_PROMPT": str(self.max_messages_per_prompt)
            if self.max_messages_per_prompt
            else "",
            "CLAWDEN_ASSISTANT_NAME": self.assistant_name,
        }
        return {k: v for k, v in env.items() if v}


def environment(
    *,
    model: str = "",
    timezone: str = "",
    trust: bool = False,
    tuning: Tuning = Tuning(),
    gateway: str = "",
) -> dict[str, str]:
    """What the agent runner reads; `trust` when the vault's trust folder is mounted at TRUST_MOUNT;
    `gateway`: where its relay dials (default: the group's socket at GATEWAY_MOUNT; never a secret)."""
    # Only placeholders and paths: the real key lives in the vault and never enters here.
    env = {
        "CLAWDEN_SESSION_DIR": SESSION_MOUNT,
        "CLAWDEN_GROUP_DIR": GROUP_MOUNT,
        "CLAWDEN_GATEWAY_SOCKET": gateway or f"{GATEWAY_MOUNT}/{SOCKET_NAME}",
        "CLAWDEN_RELAY_PORT": str(RELAY_PORT),
        "ANTHROPIC_API_KEY": "clawden-managed",
        "HOME": HOME_MOUNT,
        "CLAWDEN_CACHE_DIR": CACHE_MOUNT,
        "TZ": timezone or "UTC",
    }
    if model:
        env["CLAWDEN_MODEL"] = model
    env.update(tuning.environment())
    if trust:
        # Variables that replace a client's roots get the bundle (system roots + the gateway CA);
        # NODE_EXTRA_CA_CERTS adds to Node's own roots, so it gets the CA alone.
        bundle, ca = f"{TRUST_MOUNT}/{BUNDLE_FILE}", f"{TRUST_MOUNT}/{CA_FILE}"
        env.update(
            SSL_CERT_FILE=bundle,
            REQUESTS_CA_BUNDLE=bundle,
            CURL_CA_BUNDLE=bundle,
            GIT_SSL_CAINFO=bundle,
            NODE_EXTRA_CA_CERTS=ca,
            CLAWDEN_CA_FILE=ca,
        )
    return env


@dataclass(frozen=True)
class Engine:
    """What the Docker engine's `docker info` says that changes how agent containers are made."""

    operating_system: str = ""  # DOCKER_DESKTOP there
    cpus: int | None = None  # Docker refuses a larger `--cpus`; None: it did not say
    # Rootless Docker: the engine runs in a user namespace of its user's, and a container's root is that user.
    rootless: bool = False
    # Whether it holds a container to its memory and pids limits: rootless Docker without cgroup v2 delegation
    # accepts the limits and silently drops them.
    limits: bool = True
    # A rootful engine with `userns-remap`: it shifts every container uid to a sub-uid no host file belongs to, so
    # agent containers run in the host's user namespace there (`userns_mode`).
    remapped: bool = False

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Engine:
        cpus = info.get("NCPU")
        return cls(
            operating_system=str(info.get("OperatingSystem") or ""),
            cpus=cpus if isinstance(cpus, int) and cpus > 0 else None,
            rootless=any("name=rootless" in str(o) for o in info.get("SecurityOptions") or ()),
            remapped=any("name=userns" in str(o) for o in info.get("SecurityOptions") or ()),
            limits=info.get("MemoryLimit") is not False and info.get("PidsLimit") is not False,
        )

    @property
    def userns_mode(self) -> str | None:
        """`docker run --userns` for agent containers: "host" on a remapped engine, where their uid is then the
        host's as on a plain one (they keep their own mount, pid, network and ipc namespaces, and no capabilities);
        None, the engine's own, elsewhere."""
        return "host" if self.remapped else None


def container_user(rootless: bool = False) -> tuple[str, int | None]:
    """The user agent containers run as, and the uid the runner hands their folders to (None: its own).

    Under rootless Docker, the container's root: its uid 0 is the engine's user, the install's, who owns the
    session folders and the vault's 0600 sockets (any other uid there is a sub-uid no host file belongs to), and
    with no capabilities it is that user and no more. Otherwise as the runner's own uid; as root, as the image's
    unprivileged user (and the folders are chowned to it)."""
    uid = os.getuid()
    if rootless:
        return "0:0", None
    if uid == 0:
        return f"{AGENT_UID}:{AGENT_UID}", AGENT_UID
    return f"{uid}:{os.getgid()}", None


def vault_transport(setting: str, operating_system: str) -> VaultTransport:
    """How containers reach the vault (`[runner] vault_transport`): `auto` is tcp on Docker Desktop, whose VM no
    Unix socket of the host crosses into (the runner starts containers so, and `clawden doctor` checks so)."""
    if setting in ("socket", "tcp"):
        return setting  # type: ignore[return-value]  # narrowed by the test above
    return "tcp" if operating_system.strip() == DOCKER_DESKTOP else "socket"
