"""ANTHROPIC_API_KEY and keys/anthropic give the model key: imported when new or changed since they were last
imported, never a standing override of what `clawden secrets` set or removed. The vault's own steps, on a real
vault.db and sealer, without a bus."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clawden import config as config_mod
from clawden import servicedb
from clawden.pki import CertificateAuthority
from services.vault.catalog import Secret
from services.vault.sealing import Sealer
from services.vault.service import Vault
from services.vault.store import MIGRATIONS, Store

TYPO = "sk-ant-api03-typed-wrong-at-init"
GOOD = "sk-ant-api03-the-corrected-key"
NEWER = "sk-ant-api03-written-to-the-file-later"
MODEL = Secret(name="anthropic", kind="anthropic", host_pattern="api.anthropic.com", grants=("*",))


@dataclass
class Rig:
    cfg: config_mod.Config
    db: Path
    store: Store
    sealer: Sealer
    vault: Vault

    def start(self) -> None:
        """What the vault does at its start (and at `ctl.vault.model-key`, which `clawden init` sends)."""
        self.vault.bootstrap_model_key()

    def give_file(self, value: str) -> None:
        (self.cfg.keys_dir / "anthropic").write_text(value + "\n")
        (self.cfg.keys_dir / "anthropic").chmod(0o600)

    def cli_sets(self, value: str, secret: Secret = MODEL) -> None:
        """`clawden secrets add <name> --type anthropic --replace`, as the vault stores it."""
        self.store.put_secret(secret, self.sealer.seal(value, f"secret:{secret.name}"))

    def held(self, name: str = "anthropic") -> str | None:
        found = [sealed for secret, sealed in self.store.secrets() if secret.name == name]
        return self.sealer.open(found[0], f"secret:{name}") if found else None


def rig_on(home: Path, db: Path, key: bytes) -> Rig:
    cfg = config_mod.init_home(home)
    store = Store.open(db)
    sealer = Sealer(key)
    ca = CertificateAuthority.load_or_create(cfg.keys_dir / "ca.key", cfg.keys_dir / "ca.pem", "test CA")
    vault = Vault(cfg, store, sealer, ca, gateway=None)  # type: ignore[arg-type]  # these steps never reach it
    return Rig(cfg, db, store, sealer, vault)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    r = rig_on(tmp_path / "home", tmp_path / "vault.db", os.urandom(32))
    yield r
    r.store.close()


def test_a_key_replaced_with_the_cli_is_not_undone_by_the_file_at_the_next_start(rig: Rig) -> None:
    rig.give_file(TYPO)
    rig.start()
    assert rig.held() == TYPO

    rig.cli_sets(GOOD)
    rig.start()
    rig.start()

    assert rig.held() == GOOD


def test_a_key_removed_with_the_cli_stays_removed(rig: Rig) -> None:
    rig.give_file(TYPO)
    rig.start()

    rig.store.remove_secret("anthropic")
    rig.start()

    assert rig.held() is None


def test_the_file_is_imported_again_once_it_changes(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.give_file(TYPO)
    rig.start()
    rig.cli_sets(GOOD)
    rig.start()

    rig.give_file(NEWER)
    with caplog.at_level(logging.INFO, "clawden.vault"):
        rig.start()

    assert rig.held() == NEWER
    assert "changed there since it was last imported" in caplog.text


def test_a_stale_file_is_said_at_each_start(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.give_file(TYPO)
    rig.start()
    rig.cli_sets(GOOD)

    with caplog.at_level(logging.WARNING, "clawden.vault"):
        rig.start()

    assert "holds a model key other than the secret anthropic (changed with `clawden secrets`)" in caplog.text
    assert TYPO not in caplog.text and GOOD not in caplog.text


def test_each_source_keeps_its_own_record(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """`clawden up` from a shell holding ANTHROPIC_API_KEY, then the unit without it: neither re-imports."""
    rig.give_file(TYPO)
    rig.start()
    monkeypatch.setenv("ANTHROPIC_API_KEY", NEWER)
    rig.start()
    assert rig.held() == NEWER

    rig.cli_sets(GOOD)
    rig.start()
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    rig.start()

    assert rig.held() == GOOD


def test_a_file_given_for_the_first_time_is_imported_over_a_key_set_with_the_cli(rig: Rig) -> None:
    """`clawden init` writing keys/anthropic, then asking the running vault (ctl.vault.model-key)."""
    rig.cli_sets(GOOD)
    rig.give_file(NEWER)

    rig.start()

    assert rig.held() == NEWER


def test_vault_db_keeps_a_sealed_digest_never_the_key(rig: Rig) -> None:
    rig.give_file(GOOD)
    rig.start()
    rig.store.close()

    data = b"".join(p.read_bytes() for p in rig.db.parent.glob("vault.db*"))
    assert GOOD.encode() not in data
    assert hashlib.sha256(GOOD.encode()).hexdigest().encode() not in data


def test_a_vault_db_from_before_import_records_takes_the_file_once_as_that_version_did(tmp_path: Path) -> None:
    """Upgrading: the old vault imposed the file at every start, and said to fix a key by writing the file. The first
    start does as it would have (the file's key is taken, a typo there included), then the new rule holds: a key set
    with `clawden secrets` stands until the file changes."""
    db, key = tmp_path / "vault.db", os.urandom(32)
    old, _applied = servicedb.open_db(db, [m for m in MIGRATIONS if m[0] < "0009"])
    old.execute(
        """INSERT INTO secrets (name, kind, host_pattern, sealed, created_at, updated_at)
           VALUES ('anthropic', 'anthropic', 'api.anthropic.com', ?, 1, 2)""",
        (Sealer(key).seal(GOOD, "secret:anthropic"),),
    )
    old.execute("INSERT INTO grants VALUES ('anthropic', '*')")
    old.commit()
    old.close()
    rig = rig_on(tmp_path / "home", db, key)
    rig.give_file(TYPO)

    rig.start()
    assert rig.held() == TYPO  # what the file holds, as the old vault would have taken it at this start
    rig.cli_sets(GOOD)
    rig.start()
    assert rig.held() == GOOD  # set with `clawden secrets` since: it stands

    rig.give_file(NEWER)
    rig.start()
    assert rig.held() == NEWER
    assert sqlite3.connect(db).execute("SELECT count(*) FROM key_imports WHERE source = ''").fetchone() == (0,)


def test_a_key_that_would_tie_with_another_model_key_is_not_imported(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.cli_sets(GOOD, Secret(name="claude", kind="anthropic", host_pattern="api.anthropic.com", grants=("*",)))
    rig.give_file(TYPO)

    with caplog.at_level(logging.WARNING, "clawden.vault"):
        rig.start()

    assert rig.held() is None and rig.held("claude") == GOOD
    assert "not imported: anthropic would set x-api-key on the same requests as claude" in caplog.text
