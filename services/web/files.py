"""Files in the web chat, decided without trusting the browser: an upload's name is cut to a safe base name, its
type is what its extension allows and its first bytes show (never the type the browser says), and a download
is only a file in a session's outbox that an outbound event named, sent as an attachment under a header no file
name can break out of."""

from __future__ import annotations

import codecs
import contextlib
import re
import shutil
import urllib.parse
from pathlib import Path

MAX_UPLOAD = 10 * 1024 * 1024  # bytes; the runner copies at most 50 MiB into a session's inbox
MAX_FILES = 10  # uploads one message may carry
KEEP_UPLOADS = 7 * 86400.0  # seconds an upload is kept (as long as the bridges keep what they fetched)
SNIFF = 4096  # how much of an upload its type is judged by

TEXT = {".txt": "text/plain", ".md": "text/markdown", ".csv": "text/csv", ".json": "application/json"}
# A binary type and the first bytes every file of it starts with.
MAGIC: dict[str, tuple[str, tuple[bytes, ...]]] = {
    ".pdf": ("application/pdf", (b"%PDF-",)),
    ".png": ("image/png", (b"\x89PNG\r\n\x1a\n",)),
    ".jpg": ("image/jpeg", (b"\xff\xd8\xff",)),
    ".jpeg": ("image/jpeg", (b"\xff\xd8\xff",)),
    ".gif": ("image/gif", (b"GIF87a", b"GIF89a")),
}
ACCEPT = ",".join(sorted({*TEXT, *MAGIC}))  # the file picker's `accept`


class Refused(Exception):
    """An upload that is not taken; the message says why, for the person who sent it."""


def safe_name(given: str) -> str:
    """The browser's file name as a plain base name: no folders (either slash), no leading dot, only letters,
    digits, `.`, `_` and `-`, at most 100 characters with the extension kept; "file" when nothing is left."""
    base = re.split(r"[/\\]", given)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    stem, dot, ext = cleaned.rpartition(".")
    if dot and stem and len(ext) <= 10:
        return f"{stem[: 99 - len(ext)]}.{ext}"
    return cleaned[:100] or "file"


def _is_text(head: bytes) -> bool:
    """UTF-8 without NUL bytes (a multi-byte character cut at the end of `head` still counts)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def classify(name: str, head: bytes) -> str:
    """The MIME type of an upload named `name` (already safe) whose first bytes are `head`; Refused when its
    extension is not one the chat takes or its bytes are not that kind of file."""
    ext = Path(name).suffix.lower()
    if ext in TEXT:
        if not _is_text(head):
            raise Refused(f"{name} is not UTF-8 text, as a {ext} file must be")
        return TEXT[ext]
    if ext in MAGIC:
        mime, starts = MAGIC[ext]
        if not head.startswith(starts):
            raise Refused(f"{name} is not a {mime} file: its contents do not start as one does")
        return mime
    raise Refused(f"{name}: the web chat takes only {', '.join(sorted({*TEXT, *MAGIC}))} files")


def disposition(name: str) -> str:
    """Content-Disposition for a download: always an attachment (never shown inline, so no file is run as a
    page of ours), with an ASCII fallback name and the exact name percent-encoded (RFC 6266)."""
    base = Path(name).name or "file"
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", base)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(base, safe='')}"


def outbox_file(sessions: Path, named: str) -> Path | None:
    """The file an outbound event named, if it is a plain file in a session's outbox under `sessions`; else None
    (gone since, or a path that was never one: a download serves nothing else)."""
    path = Path(named.removeprefix("file://"))
    root = sessions.resolve()
    if not path.is_absolute() or path.is_symlink():
        return None
    real = path.resolve()
    if not real.is_relative_to(root) or "outbox" not in real.relative_to(root).parts[:-1]:
        return None
    return real if real.is_file() else None


def delete_uploads(root: Path, paths: list[str]) -> int:
    """Remove each upload's own folder (`<root>/<id>/<name>`), and nothing outside `root`; returns how many."""
    real, removed = root.resolve(), 0
    for named in paths:
        folder = Path(named).parent
        if folder.resolve().parent != real or folder.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)
            removed += 1
    return removed
