"""mitmproxy's side of bench.gateway: inject the same header the vault injects, on the same upstream.

Loaded by `mitmdump -s bench/mitm_addon.py` in the bench's own mitmproxy venv (it imports nothing of
Clawden's). Its settings come from the environment bench.gateway starts it with:

- BENCH_HOST: the host whose requests get the header (the agent's CONNECT target);
- BENCH_UPSTREAM: `127.0.0.1:<port>`, where that host is served on loopback (the gateway's host_map);
- BENCH_SECRET: the value put in `x-api-key`;
- BENCH_PORT_FILE: written with the port mitmproxy listens on once it accepts connections.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

HOST = os.environ["BENCH_HOST"]
UPSTREAM_HOST, UPSTREAM_PORT = os.environ["BENCH_UPSTREAM"].rsplit(":", 1)
SECRET = os.environ["BENCH_SECRET"]
PORT_FILE = os.environ["BENCH_PORT_FILE"]


def running() -> None:
    from mitmproxy import ctx

    port = ctx.master.addons.get("proxyserver").listen_addrs()[0][1]
    Path(PORT_FILE).write_text(str(port))


def server_connect(data: Any) -> None:
    """Send the bench host's connections to the loopback upstream (SNI stays the host's name)."""
    if data.server.address and data.server.address[0] == HOST:
        data.server.address = (UPSTREAM_HOST, int(UPSTREAM_PORT))


def request(flow: Any) -> None:
    if flow.request.pretty_host == HOST:
        flow.request.headers["x-api-key"] = SECRET
