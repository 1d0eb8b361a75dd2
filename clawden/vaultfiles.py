"""Where the vault keeps its files: its key and CA under `keys/`, its database, the public trust folder
agent containers mount, and the name of each group's gateway socket. The vault writes them; the runner
and `clawden doctor` find them by these names."""

from __future__ import annotations

from pathlib import Path

from clawden.config import Config

VAULT_KEY = "vault.key"  # in keys/, 0600: seals every secret in the database
CA_KEY = "gateway-ca.key"  # in keys/, 0600: never leaves the host
CA_CERT = "gateway-ca.pem"  # in keys/: the CA certificate, public
VAULT_DB = "vault.db"  # in vault_dir()
CA_FILE = "clawden-ca.pem"  # in trust_dir(): the CA alone
BUNDLE_FILE = "bundle.pem"  # in trust_dir(): the host's roots plus the CA
SOCKET_NAME = "gateway.sock"  # in gateway_dir/<agent group>/


def vault_dir(cfg: Config) -> Path:
    return cfg.data_dir / "vault"


def trust_dir(cfg: Config) -> Path:
    """Public: the CA certificate and the bundle containers mount read-only."""
    return cfg.path("run", "trust")
