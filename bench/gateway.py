"""Throughput, added latency and CPU cost of the vault gateway, against the same HTTPS upstream direct.

Three processes on loopback: a minimal HTTPS upstream (small JSON answers), the gateway (as the
vault runs it: uvloop, TLS interception with its CA, a generic secret injected per request, policy,
the audit trail batched into a SQLite vault.db), and this client. The client speaks to the gateway's
Unix socket directly (CONNECT, then TLS with the gateway's CA), as the in-container relay does.

- keep-alive: C connections, each sending requests back to back through one tunnel;
- new connection per request: CONNECT + a TLS handshake for every request (the upstream side stays
  pooled, as it does in the gateway);
- latency: one connection, one request at a time; added median = through the gateway minus direct.

The gateway's CPU seconds are read from /proc, so "requests per gateway core-second" does not depend
on how busy the client and upstream keep the (shared) cores.

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
from pathlib import Path
from typing import Any

HOST = "api.bench.test"
BODY = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
REQUEST = (
    b"POST /v1/messages HTTP/1.1\r\nhost: " + HOST.encode() + b"\r\nx-api-key: clawden-managed\r\n"
    b"content-type: application/json\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
ANSWER = b'{"id":"msg_bench","ok":true}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)
SECRET = "bench-secret-value-0123456789"  # injected as x-api-key by the gateway


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
            self.buffer = self.buffer[total:]
            self.transport.write(RESPONSE)


async def serve_upstream(cert: str, port_file: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert)
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", 0, ssl=context)
    _write(port_file, str(server.sockets[0].getsockname()[1]).encode())
    await _until_signal()


# ---- the gateway, as the vault service wires it ----


async def serve_gateway(socket_path: str, upstream: str, extra_ca: str, work: str, ca_out: str) -> None:
    from services.vault.audit import AuditLog
    from services.vault.catalog import Catalog, Credential, Secret
    from services.vault.certs import CertificateAuthority
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
    return client


async def open_tunnel(socket_path: str, context: ssl.SSLContext) -> _Client:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_unix_connection(_Client, socket_path)
    answer = await client.send(f"CONNECT {HOST}:443 HTTP/1.1\r\nhost: {HOST}:443\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer
    tls = await loop.start_tls(transport, client, context, server_hostname=HOST)
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
            ok += (await client.send(REQUEST)).startswith(b"HTTP/1.1 200")
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
            ok += (await client.send(REQUEST)).startswith(b"HTTP/1.1 200")
            close(client)
        return ok

    oks = await asyncio.gather(*(run() for _ in range(concurrency)))
    return time.perf_counter() - started, sum(oks)


async def latencies(opener: Any, count: int) -> list[float]:
    client = await opener()
    samples = []
    for _ in range(20):  # warm the path: leaf certificate, upstream pool
        await client.send(REQUEST)
    for _ in range(count):
        started = time.perf_counter()
        await client.send(REQUEST)
        samples.append((time.perf_counter() - started) * 1000)
    close(client)
    return samples


class Processes:
    """The upstream and gateway processes, started before and stopped after the measuring loop."""

    def __init__(self) -> None:
        from tests.fakes.anthropic import make_tls

        self.work = Path(tempfile.mkdtemp(prefix="clawden-bench-", dir="/tmp"))
        tls = make_tls([HOST], str(self.work))
        self.site_ca = tls.ca_file
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.gateway",
                    "--serve-upstream",
                    str(self.work / "fake-site.pem"),
                    str(self.work / "port"),
                ],
                env=env,
            )
        ]
        try:
            self.port = int(_wait_file(self.work / "port"))
            self.socket = str(self.work / "gw.sock")
            self.gateway = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.gateway",
                    "--serve-gateway",
                    self.socket,
                    f"127.0.0.1:{self.port}",
                    tls.ca_file,
                    str(self.work),
                    str(self.work / "gw-ca.pem"),
                ],
                env=env,
            )
            self.procs.append(self.gateway)
            self.gateway_ca = _wait_file(self.work / "gw-ca.pem")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def measure(args: argparse.Namespace, procs: Processes) -> dict[str, Any]:
    direct_ctx = ssl.create_default_context(cafile=procs.site_ca)
    gateway_ctx = ssl.create_default_context(cadata=procs.gateway_ca)

    def direct() -> Any:
        return open_direct(procs.port, direct_ctx)

    def via() -> Any:
        return open_tunnel(procs.socket, gateway_ctx)

    pid = procs.gateway.pid
    results: dict[str, Any] = {}
    await latencies(via, 200)  # warm-up
    for name, opener in (("direct", direct), ("gateway", via)):
        cpu0 = cpu_seconds(pid)
        elapsed, ok = await keep_alive(opener, args.requests, args.connections)
        cpu1 = cpu_seconds(pid)
        assert ok == args.requests // args.connections * args.connections, f"{name}: {ok} ok"
        entry: dict[str, Any] = {"rps": round(ok / elapsed), "requests": ok, "connections": args.connections}
        if name == "gateway":
            entry["gateway_cpu_ms_per_request"] = round((cpu1 - cpu0) / ok * 1000, 3)
            entry["requests_per_gateway_core_second"] = round(ok / max(cpu1 - cpu0, 1e-9))
        results.setdefault("keep_alive", {})[name] = entry
    fresh = max(args.requests // 6, 200)
    for name, opener in (("direct", direct), ("gateway", via)):
        cpu0 = cpu_seconds(pid)
        elapsed, ok = await new_connections(opener, fresh, min(args.connections, 8))
        cpu1 = cpu_seconds(pid)
        entry = {"rps": round(ok / elapsed), "requests": ok}
        if name == "gateway":
            entry["gateway_cpu_ms_per_request"] = round((cpu1 - cpu0) / ok * 1000, 3)
            entry["requests_per_gateway_core_second"] = round(ok / max(cpu1 - cpu0, 1e-9))
        results.setdefault("new_connection_per_request", {})[name] = entry
    direct_ms = await latencies(direct, args.latency_samples)
    gateway_ms = await latencies(via, args.latency_samples)
    results["latency_ms"] = {
        "direct_median": round(statistics.median(direct_ms), 3),
        "gateway_median": round(statistics.median(gateway_ms), 3),
        "added_median": round(statistics.median(gateway_ms) - statistics.median(direct_ms), 3),
        "gateway_p95": round(sorted(gateway_ms)[int(0.95 * len(gateway_ms))], 3),
        "samples": args.latency_samples,
    }
    return results


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
    parser.add_argument("--serve-upstream", nargs=2, metavar=("CERT", "PORT_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-gateway", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        _run(serve_upstream(*args.serve_upstream))
        return
    if args.serve_gateway:
        _run(serve_gateway(*args.serve_gateway))
        return
    procs = Processes()
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
