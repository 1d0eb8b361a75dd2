"""Throughput, added latency and CPU cost of the vault gateway beside mitmproxy, on the same HTTPS upstream.

Four processes on loopback: a minimal HTTPS upstream (small JSON answers; it answers 401 unless the
request carries the secret once, in place of the agent's placeholder), the gateway (as the vault runs
it: uvloop, TLS interception with its CA, a generic secret injected per request, policy, the audit
trail batched into a SQLite vault.db), mitmproxy 11 (`mitmdump -q` with bench/mitm_addon.py, which
injects the same header and sends the host to the same upstream, trusting the upstream's CA), and this
client. The client speaks to the gateway's Unix socket directly (CONNECT, then TLS with the gateway's
CA), as the in-container relay does, and to mitmproxy's loopback port the same way (trusting its CA).
mitmproxy runs in a venv of its own (build/mitmproxy-venv, made with `python3 -m venv` and pip if
missing; --mitm-venv to use another).

- keep-alive: C connections, each sending requests back to back through one tunnel;
- new connection per request: CONNECT + a TLS handshake for every request (the gateway keeps its
  upstream side pooled; mitmproxy opens an upstream connection per client connection, as it does);
- latency: one connection per way, a request at a time, the ways taking turns in rounds; added
  median = through the proxy minus direct.

Each proxy's CPU seconds are read from /proc, so "requests per core-second" does not depend on how
busy the client and upstream keep the (shared) cores. `gateway_versus_mitmproxy` holds the ratios of
requests per core-second and the issue's goals (3x with keep-alive, 2x with a new connection per
request, at most 0.5 ms added median latency), all from the one run.

    .venv/bin/python -m bench.gateway [--requests 6000] [--connections 16] [--out bench/results/gateway.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HOST = "api.bench.test"
BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'


def _request(api_key: str) -> bytes:
    return (
        b"POST /v1/messages HTTP/1.1\r\nhost: " + HOST.encode() + b"\r\nx-api-key: " + api_key.encode() + b"\r\n"
        b"content-type: application/json\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
    )


ANSWER = b'{"id":"msg_bench","ok":true}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)
SECRET = "bench-secret-value-0123456789"  # injected as x-api-key by each proxy
REQUEST = _request("clawden-managed")  # the agent's, through a proxy: a placeholder
DIRECT_REQUEST = _request(SECRET)  # direct, the agent would have to hold the key
REFUSED = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"


# ---- the upstream: just enough HTTP/1.1 to answer fast ----


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"content-length:")
    return int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0


class _Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]  # a stream server's is one
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            total = end + 4 + _content_length(self.buffer[:end])
            if len(self.buffer) < total:
                return
            head, self.buffer = self.buffer[:end].lower(), self.buffer[total:]
            self.transport.write(RESPONSE if _has_key(head) else REFUSED)


def _has_key(head: bytes) -> bool:
    """The secret arrived, once, in place of the placeholder: a proxy that fails to inject is counted as failing."""
    return head.count(b"\r\nx-api-key:") == 1 and b"\r\nx-api-key: " + SECRET.encode() + b"\r\n" in head + b"\r\n"


async def serve_upstream(cert: str, port_file: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert)
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", 0, ssl=context)
    _write(port_file, str(server.sockets[0].getsockname()[1]).encode())
    await _until_signal()


# ---- the gateway, as the vault service wires it ----


async def serve_gateway(socket_path: str, upstream: str, extra_ca: str, work: str, ca_out: str) -> None:
    from clawden.pki import CertificateAuthority
    from services.vault.audit import AuditLog
    from services.vault.catalog import Catalog, Credential, Secret
    from services.vault.gateway import Gateway
    from services.vault.store import Store

    store = await Store.start(Path(work) / "vault.db")
    audit = AuditLog(lambda batch: store.run(store.write_audit, batch))
    secret = Secret(name="bench", kind="generic", host_pattern=HOST, header_name="x-api-key", grants=("*",))
    ca = CertificateAuthority.create("Clawden bench CA")
    gateway = Gateway(
        catalog=Catalog(credentials=(Credential(secret, SECRET),)),
        ca=ca,
        work_dir=Path(work),
        extra_ca_file=extra_ca,
        host_map={HOST: upstream},
        audit=audit,
    )
    await gateway.listen("bench", Path(socket_path))
    stopping = asyncio.Event()
    flusher = asyncio.create_task(audit.run(stopping))
    _write(ca_out, ca.cert_pem)
    await _until_signal()
    await gateway.close()
    stopping.set()
    await flusher
    await store.stop()


def _write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


async def _until_signal() -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()


# ---- the client ----


class _Client(asyncio.Protocol):
    """One connection: a request at a time, the answer framed by its content-length."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.request = REQUEST

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream connection's is one

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        total = end + 4 + _content_length(self.buffer[:end])
        if len(self.buffer) >= total:
            answer, self.buffer = self.buffer[:total], self.buffer[total:]
            if not self.waiter.done():
                self.waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("closed"))

    async def send(self, data: bytes) -> bytes:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def open_direct(port: int, context: ssl.SSLContext) -> _Client:
    _, client = await asyncio.get_running_loop().create_connection(
        _Client, "127.0.0.1", port, ssl=context, server_hostname=HOST
    )
    client.request = DIRECT_REQUEST
    return client


async def open_tunnel(connect: Callable[[], Awaitable[tuple[Any, _Client]]], context: ssl.SSLContext) -> _Client:
    """CONNECT through a proxy (the gateway's Unix socket or mitmproxy's port), then TLS trusting its CA."""
    transport, client = await connect()
    answer = await client.send(f"CONNECT {HOST}:443 HTTP/1.1\r\nhost: {HOST}:443\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    tls = await asyncio.get_running_loop().start_tls(transport, client, context, server_hostname=HOST)
    assert tls is not None
    client.transport = tls
    return client


def close(client: _Client) -> None:
    if client.transport is not None:
        client.transport.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def keep_alive(opener: Any, total: int, connections: int) -> tuple[float, int]:
    clients = [await opener() for _ in range(connections)]
    per = total // connections
    started = time.perf_counter()

    async def run(client: _Client) -> int:
        ok = 0
        for _ in range(per):
            ok += (await client.send(client.request)).startswith(b"HTTP/1.1 200")
        return ok

    oks = await asyncio.gather(*(run(c) for c in clients))
    elapsed = time.perf_counter() - started
    for client in clients:
        close(client)
    return elapsed, sum(oks)


async def new_connections(opener: Any, total: int, concurrency: int) -> tuple[float, int]:
    per = total // concurrency
    started = time.perf_counter()

    async def run() -> int:
        ok = 0
        for _ in range(per):
            client = await opener()
            ok += (await client.send(client.request)).startswith(b"HTTP/1.1 200")
            close(client)
        return ok

    oks = await asyncio.gather(*(run() for _ in range(concurrency)))
    return time.perf_counter() - started, sum(oks)


async def latencies(ways: dict[str, Opener], count: int, rounds: int = 10) -> dict[str, list[float]]:
    """One connection per way, a request at a time; the ways take turns, so a busy moment hits each alike."""
    clients = {name: await opener() for name, opener in ways.items()}
    for client in clients.values():
        for _ in range(20):  # warm the path: leaf certificate, upstream pool
            await client.send(client.request)
    samples: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):
        for name, client in clients.items():
            for _ in range(max(count // rounds, 1)):
                started = time.perf_counter()
                answer = await client.send(client.request)
                samples[name].append((time.perf_counter() - started) * 1000)
                assert answer.startswith(b"HTTP/1.1 200"), f"{name}: {answer[:40]!r}"
    for client in clients.values():
        close(client)
    return samples


ROOT = Path(__file__).resolve().parents[1]
MITM_VENV = ROOT / "build" / "mitmproxy-venv"
MITM_REQUIREMENT = "mitmproxy>=11,<12"  # mitmproxy 11 runs on Python 3.11


def mitmdump(venv: Path) -> Path:
    """The mitmdump of the bench's own venv, made (python3 -m venv, pip install mitmproxy) if missing."""
    binary = venv / "bin" / "mitmdump"
    if not binary.exists():
        print(f"bench: installing {MITM_REQUIREMENT} into {venv}", file=sys.stderr)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", MITM_REQUIREMENT], check=True)
    return binary


class Processes:
    """The upstream, gateway and mitmproxy processes, started before and stopped after the measuring loop."""

    def __init__(self, mitm_venv: Path) -> None:
        from tests.fakes.anthropic import make_tls

        self.work = Path(tempfile.mkdtemp(prefix="clawden-bench-", dir="/tmp"))
        tls = make_tls([HOST], str(self.work))
        self.site_ca = tls.ca_file
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.port = int(self._serve("--serve-upstream", str(self.work / "fake-site.pem"), str(self.work / "port")))
            self.socket = str(self.work / "gw.sock")
            upstream = f"127.0.0.1:{self.port}"
            ca_out = str(self.work / "gw-ca.pem")
            self.gateway_ca = self._serve("--serve-gateway", self.socket, upstream, tls.ca_file, str(self.work), ca_out)
            self.gateway = self.procs[-1]
            self.mitm_port, self.mitm_ca = self._mitmproxy(mitmdump(mitm_venv), upstream)
            self.mitm = self.procs[-1]
        except BaseException:
            self.stop()
            raise

    def _serve(self, *args: str) -> str:
        """Start this module in a role; its last argument is the file it writes once it serves."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.procs.append(subprocess.Popen([sys.executable, "-m", "bench.gateway", *args], env=env))
        return _wait_file(Path(args[-1]))

    def _mitmproxy(self, binary: Path, upstream: str) -> tuple[int, str]:
        """mitmdump on loopback with the header-injecting addon, trusting the fake site's CA upstream."""
        confdir = self.work / "mitmproxy"
        port_file = self.work / "mitm-port"
        env = dict(
            os.environ, BENCH_HOST=HOST, BENCH_UPSTREAM=upstream, BENCH_SECRET=SECRET, BENCH_PORT_FILE=str(port_file)
        )
        command = [str(binary), "-q", "--listen-host", "127.0.0.1", "--listen-port", "0"]
        command += ["--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={self.site_ca}"]
        command += ["-s", str(ROOT / "bench" / "mitm_addon.py")]
        self.procs.append(subprocess.Popen(command, env=env))
        port = int(_wait_file(port_file))
        return port, (confdir / "mitmproxy-ca-cert.pem").read_text()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


Opener = Callable[[], Awaitable[_Client]]


def openers(procs: Processes) -> dict[str, Opener]:
    """How the agent reaches the upstream: direct, through the gateway, through mitmproxy (each CA trusted)."""
    loop = asyncio.get_running_loop()
    direct_ctx = ssl.create_default_context(cafile=procs.site_ca)
    gateway_ctx = ssl.create_default_context(cadata=procs.gateway_ca)
    mitm_ctx = ssl.create_default_context(cadata=procs.mitm_ca)

    def direct() -> Awaitable[_Client]:
        return open_direct(procs.port, direct_ctx)

    def gateway() -> Awaitable[_Client]:
        return open_tunnel(lambda: loop.create_unix_connection(_Client, procs.socket), gateway_ctx)

    def mitmproxy() -> Awaitable[_Client]:
        return open_tunnel(lambda: loop.create_connection(_Client, "127.0.0.1", procs.mitm_port), mitm_ctx)

    return {"direct": direct, "gateway": gateway, "mitmproxy": mitmproxy}


async def costed(pid: int | None, run: Awaitable[tuple[float, int]]) -> dict[str, Any]:
    """Run a load; with a proxy's pid, also its CPU time per request, from /proc (not wall time)."""
    cpu0 = cpu_seconds(pid) if pid else 0.0
    elapsed, ok = await run
    entry: dict[str, Any] = {"rps": round(ok / elapsed), "requests": ok}
    if pid:
        cpu = cpu_seconds(pid) - cpu0
        entry["cpu_ms_per_request"] = round(cpu / ok * 1000, 3)
        entry["requests_per_core_second"] = round(ok / max(cpu, 1e-9))
    return entry


async def measure(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    ways = openers(procs)
    pids = {"gateway": procs.gateway.pid, "mitmproxy": procs.mitm.pid}
    for name in pids:
        await latencies({name: ways[name]}, 200)  # warm-up: leaf certificates, pools
    results: dict[str, Any] = {"keep_alive": {}, "new_connection_per_request": {}}
    per_connection = args.requests // args.connections * args.connections
    fresh = max(args.requests // 6, 200)
    concurrency = min(args.connections, 8)
    for name, opener in ways.items():
        entry = await costed(pids.get(name), keep_alive(opener, args.requests, args.connections))
        assert entry["requests"] == per_connection, f"{name}: {entry['requests']} ok"
        results["keep_alive"][name] = entry | {"connections": args.connections}
    for name, opener in ways.items():
        entry = await costed(pids.get(name), new_connections(opener, fresh, concurrency))
        assert entry["requests"] == fresh // concurrency * concurrency, f"{name}: {entry['requests']} ok"
        results["new_connection_per_request"][name] = entry
    results["latency_ms"] = latency_summary(await latencies(ways, args.latency_samples))
    results["gateway_versus_mitmproxy"] = versus(results)
    return results


def latency_summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    direct = statistics.median(samples["direct"])
    summary: dict[str, Any] = {"direct_median": round(direct, 3), "samples": len(samples["direct"])}
    for name in ("gateway", "mitmproxy"):
        ms = sorted(samples[name])
        summary[f"{name}_median"] = round(statistics.median(ms), 3)
        summary[f"{name}_added_median"] = round(statistics.median(ms) - direct, 3)
        summary[f"{name}_p95"] = round(ms[int(0.95 * len(ms))], 3)
    return summary


GOALS = {"keep_alive_ratio": 3.0, "new_connection_ratio": 2.0, "gateway_added_median_ms": 0.5}


def versus(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, from one run: requests per proxy core-second, gateway over mitmproxy, and added latency."""

    def ratio(mode: str) -> float:
        loads = results[mode]
        return round(
            float(loads["gateway"]["requests_per_core_second"] / loads["mitmproxy"]["requests_per_core_second"]), 2
        )

    figures = {
        "keep_alive_ratio": ratio("keep_alive"),
        "new_connection_ratio": ratio("new_connection_per_request"),
        "gateway_added_median_ms": results["latency_ms"]["gateway_added_median"],
        "mitmproxy_added_median_ms": results["latency_ms"]["mitmproxy_added_median"],
    }
    met = {
        "keep_alive_ratio": figures["keep_alive_ratio"] >= GOALS["keep_alive_ratio"],
        "new_connection_ratio": figures["new_connection_ratio"] >= GOALS["new_connection_ratio"],
        "gateway_added_median_ms": figures["gateway_added_median_ms"] <= GOALS["gateway_added_median_ms"],
    }
    return figures | {"goals": GOALS, "met": met}


def _wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    return path.read_text()


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--out", default="bench/results/gateway.json")
    parser.add_argument("--mitm-venv", type=Path, default=MITM_VENV, help="mitmproxy's venv (made if missing)")
    parser.add_argument("--serve-upstream", nargs=2, metavar=("CERT", "PORT_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        _run(serve_upstream(*args.serve_upstream))
        return
    if args.serve_gateway:
        _run(serve_gateway(*args.serve_gateway))
        return
    procs = Processes(args.mitm_venv)
    try:
        results = _run(measure(args, procs))
    finally:
        procs.stop()
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        **results,
    }
    print(json.dumps(report, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
