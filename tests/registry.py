"""A registry on loopback that only counts who calls it: an image named on it shows whether anything tried to pull
(a pull that does get there fails at once, the connection closed unanswered)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def counting_registry() -> Iterator[tuple[str, list[object]]]:
    """An image name on the registry, and the callers it has had so far."""
    registry = socket.create_server(("127.0.0.1", 0))
    callers: list[object] = []

    def count() -> None:
        with contextlib.suppress(OSError):  # closed when the block is done
            while True:
                conn, _ = registry.accept()
                callers.append(conn.getpeername())
                conn.close()

    threading.Thread(target=count, daemon=True).start()
    try:
        yield f"127.0.0.1:{registry.getsockname()[1]}/clawden-absent:1", callers
    finally:
        registry.close()
