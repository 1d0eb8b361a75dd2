"""Extra mounts: only through the allowlist, never credentials, links and `..` resolved first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.runner.mounts import Allowlist, ExtraMount, MountRefused, MountRequest, resolve


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("secret")
    (tmp_path / "Documents" / "notes").mkdir(parents=True)
    (tmp_path / "Music").mkdir()
    return tmp_path


@pytest.fixture
def allowlist(home: Path) -> Allowlist:
    file = home / "allow.json"
    file.write_text(
        json.dumps(
            {
                "allowedRoots": [
                    {"path": str(home / "Documents"), "allowReadWrite": True},
                    {"path": str(home), "allowReadWrite": False},
                ]
            }
        )
    )
    return Allowlist.load(file)


def test_an_allowed_folder_mounts_read_only_unless_both_sides_say_read_write(home: Path, allowlist: Allowlist) -> None:
    notes = home / "Documents" / "notes"
    assert resolve(MountRequest(str(notes), "notes"), allowlist) == ExtraMount(notes, "/workspace/extra/notes", True)
    assert resolve(MountRequest(str(notes), "notes", read_write=True), allowlist).read_only is False
    assert resolve(MountRequest(str(home / "Music"), "music", read_write=True), allowlist).read_only is True


def test_ssh_is_refused_even_under_an_allowed_root(home: Path, allowlist: Allowlist) -> None:
    with pytest.raises(MountRefused, match=r"\.ssh holds credentials"):
        resolve(MountRequest(str(home / ".ssh"), "keys"), allowlist)


def test_a_link_into_ssh_is_refused(home: Path, allowlist: Allowlist) -> None:
    (home / "Documents" / "innocent").symlink_to(home / ".ssh")
    with pytest.raises(MountRefused, match=r"\.ssh"):
        resolve(MountRequest(str(home / "Documents" / "innocent"), "docs"), allowlist)


def test_dot_dot_cannot_climb_out_of_an_allowed_root(home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    only_docs = home / "docs-only.json"
    only_docs.write_text(json.dumps({"allowedRoots": [{"path": str(home / "Documents")}]}))
    with pytest.raises(MountRefused, match="not under an allowed root"):
        resolve(MountRequest(str(home / "Documents" / ".." / "Music"), "music"), Allowlist.load(only_docs))


def test_a_folder_holding_credentials_is_refused(home: Path, allowlist: Allowlist) -> None:
    with pytest.raises(MountRefused, match=r"contains \.ssh"):
        resolve(MountRequest(str(home), "everything"), allowlist)


def test_no_allowlist_file_means_no_extra_mounts(home: Path) -> None:
    with pytest.raises(MountRefused, match="not under an allowed root"):
        resolve(MountRequest(str(home / "Documents"), "docs"), Allowlist.load(home / "missing.json"))


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".", "x:y"])
def test_the_container_side_name_must_be_plain(home: Path, allowlist: Allowlist, name: str) -> None:
    with pytest.raises(MountRefused, match="plain name"):
        resolve(MountRequest(str(home / "Music"), name), allowlist)
