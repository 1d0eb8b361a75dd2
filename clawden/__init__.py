"""Clawden: a personal AI assistant for a home server."""

import sys as _sys

# nats-py imports aiohttp at its own import, only for NATS over WebSocket, whenever aiohttp is
# installed (a Matrix bridge's dependency brings it). Clawden speaks nats:// and tls:// only, and the
# import costs every process about 10 MB and 0.1 s, so nats is loaded with aiohttp hidden from it.
# Code that wants aiohttp itself (a bridge's client library) still imports it afterwards.
if "nats" not in _sys.modules and "aiohttp" not in _sys.modules:
    _sys.modules["aiohttp"] = None  # type: ignore[assignment]  # None in sys.modules: import raises ImportError
    try:
        import nats.aio.transport  # noqa: F401
    finally:
        del _sys.modules["aiohttp"]
