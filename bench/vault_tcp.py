"""What the vault's TCP mode (Docker Desktop, `runner.vault_transport = "tcp"`) costs beside its socket mode.

One process on loopback: a minimal HTTPS upstream (bench.gateway's), the gateway with a generic secret, and
the real in-container relay three times: to the group's Unix socket, in tcp mode to the gateway's TCP listener
with a container token (among `--tokens` registered ones, each compared in constant time), and to a second
listener speaking TLS (`[vault] tcp_tls`, a runner on another host: the relay dials tls://, the agent's TLS runs
inside it). Each request goes through a relay: CONNECT, then TLS with the gateway's CA, as an agent's client does.

- latency: one keep-alive connection per mode, a request at a time, the modes taking turns;
- new connection per request: CONNECT + TLS every time, where the relay reads and rewrites the first
  head and the gateway checks the token, one connection at a time.

    .venv/bin/python -m bench.vault_tcp [--requests 2000] [--tokens 100] [--out bench/results/vault_tcp.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import keep
from bench.gateway import HOST, SECRET, Opener, _Client, _Upstream, close, latencies, open_tunnel
from services.vault.catalog import Catalog, Credential, Secret
from services.vault.certs import ListenerTls
from services.vault.gateway import Gateway
from services.vault.tcpauth import token_hash
from tests.fakes.anthropic import make_tls

ROOT = Path(__file__).resolve().parents[1]


def load_relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_relay", ROOT / "container" / "clawden_agent" / "relay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def per_connection(opener: Opener, count: int) -> list[float]:
    """A new connection (CONNECT + TLS) for each request, one at a time: milliseconds each."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client = await opener()
        answer = await client.send(client.request)
        samples.append((time.perf_counter() - started) * 1000)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:60]
        close(client)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered), "p95_ms": ordered[int(len(ordered) * 0.95) - 1]}


async def run(requests: int, tokens: int) -> dict[str, Any]:
    relay = load_relay()
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="clawden-bench-tcp-", dir="/tmp") as tmp:
        folder = Path(tmp)
        tls = make_tls([HOST], tmp)
        upstream = await loop.create_server(_Upstream, "127.0.0.1", 0, ssl=tls.server_context)
        secret = Secret(name="bench", kind="generic", host_pattern=HOST, header_name="x-api-key", grants=("*",))
        gateway = Gateway(
            catalog=Catalog(credentials=(Credential(secret, SECRET),)),
            extra_ca_file=tls.ca_file,
            host_map={HOST: f"127.0.0.1:{upstream.sockets[0].getsockname()[1]}"},
            work_dir=folder,
        )
        token = f"clt_{os.urandom(32).hex()}"
        registered = {token_hash(f"clt_other_{n}"): f"g{n}" for n in range(tokens - 1)} | {token_hash(token): "bench"}
        gateway.update_tokens(registered)
        await gateway.listen("bench", folder / "bench" / "gateway.sock")
        port = await gateway.listen_tcp("127.0.0.1", 0)
        tls_port = await gateway.listen_tcp(
            "127.0.0.1", 0, ListenerTls(gateway.ca, folder / "l", ("127.0.0.1",)).context
        )
        (folder / "ca.pem").write_bytes(gateway.ca.cert_pem)
        os.environ[relay.TOKEN_FILE_ENV] = str(folder / "token")
        os.environ[relay.CA_FILE_ENV] = str(folder / "ca.pem")
        by_socket = await relay.serve_relay(str(folder / "bench" / "gateway.sock"))
        (folder / "token").write_text(token)
        by_tcp = await relay.serve_relay(f"tcp://127.0.0.1:{port}", hide=False)
        (folder / "token").write_text(token)  # each relay takes (and deletes) its own copy
        by_tls = await relay.serve_relay(f"tls://127.0.0.1:{tls_port}", hide=False)
        context = ssl.create_default_context(cadata=gateway.ca.cert_pem.decode())

        def through(server: asyncio.Server) -> Opener:
            relay_port = server.sockets[0].getsockname()[1]
            return lambda: open_tunnel(lambda: loop.create_connection(_Client, "127.0.0.1", relay_port), context)

        ways = {"socket": through(by_socket), "tcp": through(by_tcp), "tls": through(by_tls)}
        try:
            kept = await latencies(ways, requests)
            fresh = {name: await per_connection(opener, requests // 10) for name, opener in ways.items()}
        finally:
            for server in (by_socket, by_tcp, by_tls, upstream):
                server.close()
            await gateway.close()
    result: dict[str, Any] = {f"keep_alive_{n}": summary(s) for n, s in kept.items()}
    result |= {f"new_connection_{n}": summary(s) for n, s in fresh.items()}
    for way in ("tcp", "tls"):
        result[f"{way}_added_p50_ms"] = {
            "keep_alive": result[f"keep_alive_{way}"]["p50_ms"] - result["keep_alive_socket"]["p50_ms"],
            "new_connection": result[f"new_connection_{way}"]["p50_ms"] - result["new_connection_socket"]["p50_ms"],
        }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=100, help="tokens registered (each compared per connection)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/vault_tcp.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.requests, args.tokens))
    result |= {"requests": args.requests, "tokens": args.tokens, "python": platform.python_version()}
    keep(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
