"""A slow file server for the fakes whose platforms hand over files (Slack, Discord, Matrix's media repository)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Trickle:
    """Downloads handed over `chunk` bytes at a time, each chunk once the test lets it through (`step`): a slow file
    server whose pace the test sets, without the fake sleeping. `sent` counts the chunks written; `aborted` is set
    when the client went away mid-download."""

    chunk: int = 64 * 1024
    sent: int = 0
    aborted: threading.Event = field(default_factory=threading.Event)
    _permits: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _open: threading.Event = field(default_factory=threading.Event)

    def step(self, chunks: int = 1) -> None:
        for _ in range(chunks):
            self._permits.release()

    def finish(self) -> None:
        """Let every chunk through from now on (the server stops: no download is left waiting)."""
        self._open.set()

    async def serve(self, request: web.Request, data: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        )
        await resp.prepare(request)
        try:
            for at in range(0, len(data), self.chunk):
                while not self._open.is_set() and not await asyncio.to_thread(self._permits.acquire, True, 0.2):
                    pass
                await resp.write(data[at : at + self.chunk])
                self.sent += 1
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.aborted.set()
            raise
        return resp
