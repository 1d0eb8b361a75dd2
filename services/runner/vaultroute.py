"""How an agent container reaches the vault: its group's Unix socket, or the vault's TCP listener with a
per-container token (`[runner] vault_transport`). The choices are pure; `place_token` writes the token
where only the container's relay takes it (it deletes the file as it reads it, before the agent starts), and
`trust_folder` the gateway CA where the vault's trust folder is not on this host (a runner on another host)."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from clawden.agentcontainer import GATEWAY_MOUNT
from clawden.config import RunnerConfig
from clawden.pki import write_atomic
from clawden.vaultfiles import BUNDLE_FILE, CA_FILE, SOCKET_NAME

UNIX_PREFIX = "unix:"
TOKEN_NAME = "token"  # in the relay folder; the relay reads /run/clawden/relay/token
# Where hosts keep their roots (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS), as the vault reads them for its bundle.
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


@dataclass(frozen=True)
class VaultRoute:
    """What a container gets for the vault: the relay's target (CLAWDEN_GATEWAY_SOCKET), the folder
    mounted read-only at GATEWAY_MOUNT (None: none), and the Docker network it joins."""

    gateway: str
    gateway_dir: Path | None
    network: str = "none"


def socket_route(gateway_dir: Path) -> VaultRoute:
    return VaultRoute(gateway=f"{GATEWAY_MOUNT}/{SOCKET_NAME}", gateway_dir=gateway_dir)


def tcp_problem(runner: RunnerConfig) -> str | None:
    """Why containers could not reach the TCP listener with these settings; None when they can."""
    host = runner.vault_tcp_host
    if host.startswith(UNIX_PREFIX):
        path = host.removeprefix(UNIX_PREFIX)
        return None if path.startswith("/") else f"runner.vault_tcp_host {host!r}: unix: takes an absolute path"
    if not host or any(c in host for c in "/@ "):
        return f"runner.vault_tcp_host {host!r} is not a host name"
    if not runner.vault_network:
        return (
            "runner.vault_transport is tcp, but a container without a network cannot reach "
            f"{host}: set runner.vault_network to the Docker network it joins (README: Docker Desktop)"
        )
    return None


def tcp_route(runner: RunnerConfig, port: int, tls_name: str = "") -> VaultRoute:
    """The listener by name and port, or through a Unix socket on this host that leads to it (the
    socket's folder is mounted; the container keeps --network none). `tls_name`: the listener speaks TLS
    (the vault's `TcpGateway.tls_name`): the relay dials `tls://`, checking the name it dials, or through the
    socket `tls+unix:<path>#<tls_name>`, checking that name."""
    host = runner.vault_tcp_host
    if host.startswith(UNIX_PREFIX):
        path = Path(host.removeprefix(UNIX_PREFIX))
        socket = f"{GATEWAY_MOUNT}/{path.name}"
        gateway = f"tls+unix:{socket}#{tls_name}" if tls_name else f"tcp+unix:{socket}"
        return VaultRoute(gateway=gateway, gateway_dir=path.parent)
    authority = f"[{host}]" if ":" in host else host
    scheme = "tls" if tls_name else "tcp"
    return VaultRoute(gateway=f"{scheme}://{authority}:{port}", gateway_dir=None, network=runner.vault_network)


def new_token() -> tuple[str, str]:
    """(a container's token: 256 random bits, its sha256 for the vault)."""
    token = f"clt_{secrets.token_urlsafe(32)}"
    return token, hashlib.sha256(token.encode()).hexdigest()


def place_token(folder: Path, token: str, uid: int | None) -> None:
    """A fresh folder (mounted read-write at RELAY_MOUNT) holding only the token, readable by the
    container's user alone; whatever an earlier container left there goes."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    fd = os.open(folder / TOKEN_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(token)
    if uid is not None:
        os.chown(folder / TOKEN_NAME, uid, uid)
        os.chown(folder, uid, uid)


def trust_folder(vaults: Path, ca_pem: str, own: Path, system_bundles: tuple[str, ...] = SYSTEM_BUNDLES) -> Path:
    """The trust folder a tcp-mode container mounts: the vault's (`vaults`) where this host has it holding the
    CA the vault answered (the vault's own host), else `own`, written here from `ca_pem` as the vault writes its
    own: the CA alone, and a bundle of this host's roots plus the CA. A runner on another host so needs nothing
    from the vault's disk; the CA certificate is public, and its key never leaves the vault."""
    if not ca_pem or _read(vaults / CA_FILE) == ca_pem.encode():
        return vaults
    own.mkdir(parents=True, exist_ok=True)
    own.chmod(0o755)
    roots = next((data for path in system_bundles if (data := _read(Path(path)))), b"")
    ca = ca_pem.encode()
    for path, data in ((own / CA_FILE, ca), (own / BUNDLE_FILE, ca + b"\n" + roots if roots else ca)):
        if _read(path) != data:
            write_atomic(path, data, 0o644)
    return own


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
