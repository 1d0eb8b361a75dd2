"""`clawden init`: the home folder, its private keys folder, the config and the default agent group."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from clawden import config as config_mod
from clawden import natsauth
from clawden.registry import installed_channels

STARTER_CLAUDE_MD = """\
# Your assistant

You are a personal assistant running on your owner's home server. You answer the person who
writes to you through their chat app. Reply with the `send_message` tool; keep replies short
and plain, as in a chat.

This folder is your memory: notes you keep here survive between conversations.
"""

GLOBAL_CLAUDE_MD = """\
# Shared memory

Facts every agent group may read (mounted read-only into every container).
"""


def init(home: Path | None = None) -> config_mod.Config:
    cfg = config_mod.init_home(home)
    group = cfg.groups_dir / "main"
    group.mkdir(parents=True, exist_ok=True)
    if not (group / "CLAUDE.md").exists():
        (group / "CLAUDE.md").write_text(STARTER_CLAUDE_MD)
    shared = cfg.groups_dir / "global"
    shared.mkdir(exist_ok=True)
    if not (shared / "CLAUDE.md").exists():
        (shared / "CLAUDE.md").write_text(GLOBAL_CLAUDE_MD)
    if cfg.embedded_nats:
        natsauth.write_server_config(cfg, tuple(installed_channels()))
    return cfg


def write_new_memory(groups_dir: Path, name: str, text: str) -> bool:
    """A new group's `groups/<name>/CLAUDE.md` holding `text`, its folder made when missing: never through a
    link, never outside groups/, never over a file that is there (False then: a redelivery, or a folder the
    owner made)."""
    folder = groups_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or folder.resolve().parent != groups_dir.resolve():
        raise OSError(errno.ENOTDIR, f"{folder} is a link or leaves {groups_dir}")
    try:
        fd = os.open(folder / "CLAUDE.md", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True
