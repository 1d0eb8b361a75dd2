"""Files in the web chat, as tables: an upload's name made safe, its type judged by its bytes, a download's
header, and which named paths a download may serve."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.web import files

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("notes.txt", "notes.txt"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ada\\report.pdf", "report.pdf"),
        (".bashrc", "bashrc"),
        ("..", "file"),
        ("", "file"),
        ("rapport été.md", "rapport__t_.md"),
        ('a;b"c<d>.txt', "a_b_c_d_.txt"),
        ("x" * 300 + ".txt", "x" * 96 + ".txt"),
        ("y" * 300, "y" * 100),
        ("archive.tar.verylongextension", "archive.tar.verylongextension"),
        ("noext", "noext"),
    ],
)
def test_an_uploads_name_is_cut_to_a_safe_base_name(given: str, safe: str) -> None:
    assert files.safe_name(given) == safe


@pytest.mark.parametrize(
    ("name", "head", "mime"),
    [
        ("a.txt", b"buy oat milk\n", "text/plain"),
        ("a.md", "# titre été".encode(), "text/markdown"),
        ("a.csv", b"a,b\n1,2\n", "text/csv"),
        ("a.json", b"{}", "application/json"),
        ("a.txt", "é".encode()[:1], "text/plain"),  # a character cut at the end of what was read
        ("a.PNG", PNG, "image/png"),
        ("a.jpeg", b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        ("a.jpg", b"\xff\xd8\xff\xdb", "image/jpeg"),
        ("a.gif", b"GIF89a...", "image/gif"),
        ("a.pdf", b"%PDF-1.7\n", "application/pdf"),
    ],
)
def test_an_upload_of_a_kind_the_chat_takes_gets_the_type_its_bytes_show(name: str, head: bytes, mime: str) -> None:
    assert files.classify(name, head) == mime


@pytest.mark.parametrize(
    ("name", "head", "why"),
    [
        ("a.exe", b"MZ\x90\x00", "the web chat takes only"),
        ("page.html", b"<script>alert(1)</script>", "the web chat takes only"),
        ("noext", b"hello", "the web chat takes only"),
        ("a.txt", b"\xff\xfe\x00binary", "is not UTF-8 text"),
        ("a.txt", b"text\x00with a nul", "is not UTF-8 text"),
        ("a.png", b"<svg onload=alert(1)>", "is not a image/png file"),
        ("a.pdf", PNG, "is not a application/pdf file"),
    ],
)
def test_an_upload_of_another_kind_or_whose_bytes_say_otherwise_is_refused(name: str, head: bytes, why: str) -> None:
    with pytest.raises(files.Refused, match=why):
        files.classify(name, head)


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("report.txt", "attachment; filename=\"report.txt\"; filename*=UTF-8''report.txt"),
        ('a"b.txt', "attachment; filename=\"a_b.txt\"; filename*=UTF-8''a%22b.txt"),
        ("été.pdf", "attachment; filename=\"_t_.pdf\"; filename*=UTF-8''%C3%A9t%C3%A9.pdf"),
        (
            "x\r\nSet-Cookie: a=b",
            "attachment; filename=\"x__Set-Cookie_ a_b\"; filename*=UTF-8''x%0D%0ASet-Cookie%3A%20a%3Db",
        ),
        ("/s/outbox/1/../r.txt", "attachment; filename=\"r.txt\"; filename*=UTF-8''r.txt"),
        ("", "attachment; filename=\"file\"; filename*=UTF-8''file"),
    ],
)
def test_a_download_is_an_attachment_whose_name_cannot_break_the_header(name: str, header: str) -> None:
    assert files.disposition(name) == header


def test_a_download_serves_only_a_plain_file_in_a_sessions_outbox(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    box = sessions / "main" / "s1" / "outbox" / "7"
    box.mkdir(parents=True)
    (box / "report.txt").write_text("numbers")
    inbox = sessions / "main" / "s1" / "inbox" / "m1"
    inbox.mkdir(parents=True)
    (inbox / "note.txt").write_text("theirs")
    (tmp_path / "secret").write_text("no")
    os.symlink(tmp_path / "secret", box / "link.txt")
    (sessions / "main" / "s1" / "outbox" / "loose.txt").write_text("in the outbox itself")
    cases = {
        str(box / "report.txt"): box / "report.txt",
        (box / "report.txt").as_uri(): box / "report.txt",
        str(box / "gone.txt"): None,
        str(box): None,  # a folder
        str(box / "link.txt"): None,
        str(inbox / "note.txt"): None,  # a session file, but not one the agent sent
        str(box / ".." / ".." / ".." / ".." / ".." / "secret"): None,
        "relative/outbox/7/report.txt": None,
        str(tmp_path / "secret"): None,
        str(sessions / "main" / "s1" / "outbox" / "loose.txt"): sessions / "main" / "s1" / "outbox" / "loose.txt",
    }
    for named, expected in cases.items():
        assert files.outbox_file(sessions, named) == (expected.resolve() if expected else None), named


def test_old_uploads_go_with_their_own_folders_and_nothing_outside_the_uploads_folder(tmp_path: Path) -> None:
    root = tmp_path / "files"
    kept, old, gone = root / "a1" / "keep.txt", root / "b2" / "old.txt", root / "c3" / "gone.txt"
    for path in (kept, old):
        path.parent.mkdir(parents=True)
        path.write_text("x")
    outside = tmp_path / "elsewhere" / "x.txt"
    outside.parent.mkdir()
    outside.write_text("mine")
    os.symlink(tmp_path / "elsewhere", root / "d4")
    named = [str(old), str(gone), str(outside), str(root / "d4" / "x.txt"), str(root / "loose.txt")]
    assert files.delete_uploads(root, named) == 1
    assert kept.exists() and not old.parent.exists() and outside.exists() and (root / "d4").is_symlink()
