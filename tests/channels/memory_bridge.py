"""An in-memory chat platform behind the Bridge contract, for testing the shared machinery."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

from clawden.bus import events as ev
from services.channels.bridge import Bridge, ButtonRef, Capabilities, Inbound


class MemoryBridge(Bridge):
    name = "memory"

    def __init__(self, capabilities: Capabilities | None = None) -> None:
        self.capabilities = capabilities or Capabilities(max_text=20, cards=True)
        self.posted: list[tuple[str, str]] = []  # (chat, text) as the platform shows them
        self.failures: deque[BaseException] = deque()  # raised by the next send_text calls, in turn
        self.calls = 0
        self.keys: list[str] = []

    async def listen(self, inbound: Inbound) -> None:
        await asyncio.Event().wait()

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        self.calls += 1
        self.keys.append(key)
        if self.failures:
            failure = self.failures.popleft()
            if getattr(failure, "after_posting", False):
                self.posted.append((route.chat_id, text))
            raise failure
        self.posted.append((route.chat_id, text))
        return f"p{len(self.posted)}"

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        self.posted.append((route.chat_id, f"<file {path.name}>"))
        return f"p{len(self.posted)}"
