"""An agent container as the agent runner inside it sees it: where the host's folders are mounted, the
environment it reads, and the user it runs as. The runner makes agent containers from these;
`clawden doctor` makes one like them to check the gateway CA's trust."""

from __future__ import annotations

import os

from clawden.vaultfiles import BUNDLE_FILE, CA_FILE, SOCKET_NAME

SESSION_MOUNT = "/workspace/session"
GROUP_MOUNT = "/workspace/agent"
GLOBAL_MOUNT = "/workspace/global"
HOME_MOUNT = "/home/agent"  # the session's own Claude Code home (its conversations), never shared
CACHE_MOUNT = "/run/clawden/cache"  # the group's, shared by its sessions: what a container may remember
PROJECT_SETTINGS = ".claude"  # in the group folder, mounted read-only over the writable folder
GATEWAY_MOUNT = "/run/clawden/gateway"
TRUST_MOUNT = "/run/clawden/trust"  # the vault's CA and a bundle of it with the system roots, read-only
RELAY_PORT = 3128
AGENT_UID = 1000


def environment(
    *, model: str = "", timezone: str = "", trust: bool = False, max_turns: int = 0, turn_budget: float = 0.0
) -> dict[str, str]:
    """What the agent runner reads; `trust` when the vault's trust folder is mounted at TRUST_MOUNT."""
    # Only placeholders and paths: the real key lives in the vault and never enters here.
    env = {
        "CLAWDEN_SESSION_DIR": SESSION_MOUNT,
        "CLAWDEN_GROUP_DIR": GROUP_MOUNT,
        "CLAWDEN_GATEWAY_SOCKET": f"{GATEWAY_MOUNT}/{SOCKET_NAME}",
        "CLAWDEN_RELAY_PORT": str(RELAY_PORT),
        "ANTHROPIC_API_KEY": "clawden-managed",
        "HOME": HOME_MOUNT,
        "CLAWDEN_CACHE_DIR": CACHE_MOUNT,
        "TZ": timezone or "UTC",
    }
    if model:
        env["CLAWDEN_MODEL"] = model
    if max_turns:
        env["CLAWDEN_MAX_TURNS"] = str(max_turns)
    if turn_budget:
        env["CLAWDEN_TURN_BUDGET"] = f"{turn_budget:g}"
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


def container_user() -> tuple[str, int | None]:
    """Run as the runner's own uid; as root, as the image's unprivileged user (and chown to it)."""
    uid = os.getuid()
    if uid == 0:
        return f"{AGENT_UID}:{AGENT_UID}", AGENT_UID
    return f"{uid}:{os.getgid()}", None
