"""`RefusedKeys` with what an earlier vault process recorded: a refusal of the key still stored is the trouble from the
first catalog on, one of a key replaced since is dropped, and every change is handed to `save` (the service keeps it in
vault.db); the store side: `Store` keeps the set and a vault.db from before gains the table."""

from __future__ import annotations

import hashlib
from pathlib import Path

from clawden import servicedb
from clawden.bus.ctl import vault as vault_ctl
from services.vault.catalog import Catalog, Credential, Secret
from services.vault.modelcheck import Refusal, RefusedKeys
from services.vault.store import MIGRATIONS, Store

MODEL = Secret(name="anthropic", kind="anthropic", host_pattern="api.anthropic.com")
OLD, NEW = Credential(MODEL, "sk-ant-old"), Credential(MODEL, "sk-ant-new")
REJECTED = vault_ctl.ModelCheck(name="anthropic", outcome="rejected", status=401, message="invalid x-api-key")
ACCEPTED = vault_ctl.ModelCheck(name="anthropic", outcome="accepted", status=200)
LINE = (
    "the model API refused the anthropic key (401 invalid x-api-key); set the right one: "
    "`clawden secrets add anthropic --type anthropic --replace`"
)


def digest(credential: Credential) -> str:
    return hashlib.sha256(credential.value.encode()).hexdigest()


class Recorder:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.saved: list[dict[str, Refusal]] = []


def keys(recorded: dict[str, Refusal] | None = None) -> tuple[RefusedKeys, Recorder]:
    r = Recorder()
    return RefusedKeys(r.said.append, refused=recorded, save=r.saved.append), r


def test_a_recorded_refusal_of_the_key_still_stored_is_the_trouble_at_the_first_catalog() -> None:
    refused, r = keys({"anthropic": Refusal(digest(OLD), "401 invalid x-api-key")})
    refused.stored(Catalog(credentials=(OLD,)))
    assert (r.said, r.saved) == ([LINE], [])  # nothing changed: nothing to write again


def test_a_recorded_refusal_of_a_key_replaced_since_is_dropped_unsaid() -> None:
    refused, r = keys({"anthropic": Refusal(digest(OLD), "401 invalid x-api-key")})
    refused.stored(Catalog(credentials=(NEW,)))
    assert (refused.line, r.said, r.saved) == ("", [], [{}])


def test_a_recorded_refusal_of_a_key_removed_since_is_dropped() -> None:
    refused, r = keys({"anthropic": Refusal(digest(OLD), "401 invalid x-api-key")})
    refused.stored(Catalog())
    assert (refused.line, r.saved) == ("", [{}])


def test_each_change_is_saved_once() -> None:
    refused, r = keys()
    refused.stored(Catalog(credentials=(OLD,)))
    refused.checked(OLD, REJECTED)
    refused.answered(("anthropic",), 401)  # known already: the same refusal
    refused.checked(OLD, ACCEPTED)
    assert r.saved == [{"anthropic": Refusal(digest(OLD), "401 invalid x-api-key")}, {}]
    assert r.said == [LINE, ""]


def test_without_a_record_nothing_is_saved_until_a_refusal() -> None:
    refused, r = keys()
    refused.stored(Catalog(credentials=(OLD,)))
    refused.answered(("anthropic",), 200)
    assert (r.said, r.saved) == ([], [])


def test_the_store_keeps_the_set_last_saved(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "vault.db")
    store.save_model_key_refusals({"anthropic": ("sealed-1", "401"), "other": ("sealed-2", "403")})
    store.save_model_key_refusals({"other": ("sealed-2", "403")})
    assert store.model_key_refusals() == {"other": ("sealed-2", "403")}
    store.close()


def test_a_vault_db_from_before_the_refusals_gains_their_table(tmp_path: Path) -> None:
    db = tmp_path / "vault.db"
    old, _ = servicedb.open_db(db, [m for m in MIGRATIONS if m[0] < "0010"])
    old.close()
    store = Store.open(db)
    assert store.model_key_refusals() == {}
    store.close()
