"""Secrets at rest: AES-256-GCM, bound to their row, under a 0600 key (or a systemd credential)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from services.vault.sealing import Sealer, SealError, load_key


def test_a_sealed_value_opens_only_with_its_key_and_context(tmp_path: Path) -> None:
    sealer = Sealer(load_key(tmp_path / "keys" / "vault.key"))
    sealed = sealer.seal("sk-ant-api03-xyz", "secret:anthropic")

    assert "sk-ant" not in sealed and sealed.startswith("v1:")
    assert sealer.open(sealed, "secret:anthropic") == "sk-ant-api03-xyz"
    assert sealer.seal("same", "c") != sealer.seal("same", "c")  # a fresh nonce each time
    with pytest.raises(SealError):
        sealer.open(sealed, "secret:other")
    with pytest.raises(SealError):
        Sealer(os.urandom(32)).open(sealed, "secret:anthropic")
    assert "xyz" not in repr(sealer)


def test_the_key_file_is_made_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    key = load_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert load_key(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_systemd_credential_wins_over_the_file(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    key = os.urandom(32)
    (creds / "vault-key").write_bytes(base64.b64encode(key))
    assert load_key(tmp_path / "vault.key", {"CREDENTIALS_DIRECTORY": str(creds)}) == key
    assert not (tmp_path / "vault.key").exists()
    (creds / "vault-key").write_text("too short")
    with pytest.raises(ValueError, match="32-byte"):
        load_key(tmp_path / "vault.key", {"CREDENTIALS_DIRECTORY": str(creds)})
