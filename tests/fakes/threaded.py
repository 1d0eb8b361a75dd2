"""Running a fake server on its own event loop in a daemon thread, for tests that block on subprocesses."""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class ThreadedServer:
    """Mixin for a fake with `async start(host, port)` (which sets `self._loop`) and `async stop()`."""

    _loop: asyncio.AbstractEventLoop | None
    _thread: threading.Thread | None

    def _serve_in_thread(self, host: str, port: int, name: str) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start(host, port))  # type: ignore[attr-defined]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        if failure:
            raise failure[0]

    def stop_thread(self) -> None:
        """Stop a fake started in a thread; a no-op for one started on the caller's loop."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(timeout=10)  # type: ignore[attr-defined]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the fake's loop from another thread."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)


def serve_from_command_line(make: Callable[[], Any], doc: str, describe: Callable[[Any], str]) -> None:
    """`python -m tests.fakes.<name> [--port N] [--host H]`: start a fake, print `describe(fake)`, run
    until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    async def main() -> None:
        fake = await make().start(args.host, args.port)
        print(describe(fake), flush=True)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        await fake.stop()

    asyncio.run(main())
