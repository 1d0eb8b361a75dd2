"""A bridge's credential file (keys/<name>) holding a new credential: a running bridge notices and restarts itself
(`watch`), and `clawden up` starts again one that stopped because it could not run with the old one, so the fresh
process reads it. An owner who mends the file need not know how to restart one bridge."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from clawden.config import Config, token_variable
from clawden.runtime import ConfigurationError, ServiceContext, sleep_unless_stopping

log = logging.getLogger("clawden.channels")

# Seconds between looks: how soon a change is noticed, not what is correct. A look is one stat; the bytes are read
# only when the stat moved.
EVERY = 2.0

Verdict = Literal["same", "wait", "restart"]
Check = Callable[[str], object]  # the bridge's own reading of its credential: raises ConfigurationError if bad


@dataclass(frozen=True)
class Look:
    """What one look at the file found: the digest of a credential the bridge would take, or why it would not."""

    digest: str = ""
    problem: str = ""


def examine(data: bytes | None, mode: int, check: Check | None = None) -> Look:
    """The file's bytes (None: it is gone) and mode as the bridge's start would judge them (`read_secret`, then the
    bridge's own `check`)."""
    if data is None:
        return Look(problem="it is gone")
    if mode & 0o077:
        return Look(problem="it is readable by other users; run `chmod 600` on it")
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        return Look(problem="it is not text (UTF-8)")
    if not text:
        return Look(problem="it is empty")
    if check is not None:
        try:
            check(text)
        except ConfigurationError as exc:
            return Look(problem=str(exc))
    return Look(digest=hashlib.sha256(data).hexdigest())


def judge(taken: str, look: Look) -> Verdict:
    """Restart for a credential the bridge would take that is not the one it runs with (`taken`, its digest); wait
    while the file holds none (half written, emptied, removed, open to others): a restart then would not start."""
    if look.problem:
        return "wait"
    return "same" if look.digest == taken else "restart"


class KeyFile:
    """The credential file of one bridge, looked at again only when its stat changes."""

    def __init__(self, path: Path, shown: str, check: Check | None) -> None:
        self.path = path
        self.shown = shown
        self.check = check
        self.stat: tuple[int, ...] | None = ()  # (inode, size, mtime, mode) at the last look; None: it was gone
        self.taken = ""

    @classmethod
    def of(cls, cfg: Config, name: str, check: Check | None = None) -> KeyFile | None:
        """The file the bridge `name` read its credential from, its digest taken as the one it runs with; None when
        the credential came from `CLAWDEN_<NAME>_TOKEN` (as `read_secret` prefers), as nothing is there to watch."""
        if os.environ.get(token_variable(name), "").strip():
            return None
        key = cls(cfg.keys_dir / name, f"keys/{name}", check)
        key.taken = (key.look() or Look()).digest
        return key

    def look(self) -> Look | None:
        """What the file holds now; None when its stat is as at the last look (so it holds the same)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:  # the keys folder closed to this user: looked at again next time
            self.stat = ()
            return Look(problem=f"it cannot be read ({exc.strerror})")
        stat = None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
        if stat == self.stat:
            return None
        self.stat = stat
        if st is None:
            return examine(None, 0, self.check)
        try:
            return examine(self.path.read_bytes(), st.st_mode, self.check)
        except OSError as exc:  # unreadable, or gone since the stat: the next look reads it again
            self.stat = ()
            return Look(problem=f"it cannot be read ({exc.strerror})")


async def watch(key: KeyFile, ctx: ServiceContext) -> None:
    """Look at the file every EVERY seconds until the service stops; once it holds a new credential the bridge would
    take, restart the service (`ServiceContext.restart`). Why a changed file is not taken is said once."""
    said = ""
    while await sleep_unless_stopping(ctx.stopping, EVERY):
        look = await asyncio.to_thread(key.look)
        if look is None:
            continue
        verdict = judge(key.taken, look)
        if verdict == "restart":
            log.info("%s changed; restarting to use it", key.shown)
            ctx.restart(f"{key.shown} changed")
            return
        if verdict == "wait" and look.problem != said:
            log.warning("%s is not taken: %s; the bridge goes on with the credential it has", key.shown, look.problem)
        said = look.problem
