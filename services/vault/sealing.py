"""Secrets at rest: AES-256-GCM under one key kept in a 0600 file (or a systemd credential).

A sealed value is ``v1:<base64 of nonce (12 bytes) + ciphertext + tag (16 bytes)>``. The secret's
id is the associated data, so a ciphertext copied onto another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("clawden.vault")

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = "v1"
# `LoadCredential=vault-key:/path` in the unit puts it here; it wins over the key file.
CREDENTIAL_NAME = "vault-key"


class SealError(Exception):
    """A sealed value that cannot be opened: a wrong key, or a damaged or moved row."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the vault key must be 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{VERSION}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def open(self, token: str, context: str) -> str:
        version, _, body = token.partition(":")
        if version != VERSION:
            raise SealError(f"unknown sealed format {version!r}")
        try:
            raw = base64.b64decode(body, validate=True)
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise SealError("the sealed value does not open with this vault key") from exc


def load_key(key_file: Path, environ: dict[str, str] | None = None) -> bytes:
    """The vault key: the systemd credential if present, else ``key_file``, created (0600) when missing."""
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
        return _decode_key((Path(cred_dir) / CREDENTIAL_NAME).read_bytes(), Path(cred_dir) / CREDENTIAL_NAME)
    try:
        data = key_file.read_bytes()
    except FileNotFoundError:
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = os.urandom(KEY_BYTES)
        # O_EXCL: two vaults starting at once must not each write their own key.
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_key(key_file, environ)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64encode(key) + b"\n")
        log.info("created the vault key %s", key_file)
        return key
    _tighten(key_file)
    return _decode_key(data, key_file)


def _decode_key(data: bytes, source: Path) -> bytes:
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"{source} does not hold a base64 32-byte key")
    return key


def _tighten(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); made it 0600", path, mode)
        path.chmod(0o600)
