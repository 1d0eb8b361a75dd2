"""Three nats-server processes on loopback forming one cluster, written by `clawden cluster init` for a
home: for the cluster tests and bench/cluster.py."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from clawden import config, natsauth, natsserver, setup
from clawden.bus import connect, ensure_streams
from clawden.cli.commands import cluster


class Cluster:
    """The nodes of one home's cluster; node i (0-based) can be killed and started again."""

    def __init__(self, home: Path, *, tls: bool = False) -> None:
        self.home = home
        cfg = setup.init(home)
        base = natsserver.free_port(span=13)  # three nodes' client ports from base, their routes from base + 10
        self.nodes = cluster.plan([], 3, base, base + 10)
        self.tls = tls
        self.out = home / "cluster"
        self.confs = cluster.write_cluster(cfg, self.nodes, self.out, tls=tls, store_root=self.out)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * 3

    @property
    def urls(self) -> list[str]:
        return cluster.client_urls(self.nodes, self.tls)

    @property
    def nats_settings(self) -> str:
        """The `[nats]` body for config.toml (without the header): every node, three replicas."""
        return (self.out / "clawden.toml").read_text().removeprefix("[nats]\n")

    def start(self, i: int | None = None) -> Cluster:
        for n in range(3) if i is None else (i,):
            log = self.out / f"{self.nodes[n].name}.log"
            with log.open("ab") as out:
                self.procs[n] = subprocess.Popen(
                    [str(natsserver.binary()), "-c", str(self.confs[n])],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        try:
            for n in range(3) if i is None else (i,):
                natsserver.wait_listening(self.nodes[n].client_port, self.procs[n])
        except natsserver.NatsServerError:
            self.stop()  # no node of a cluster that did not come up outlives it
            raise
        return self

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    async def connect(self, ident: str = natsauth.CLI, *, only: int | None = None, **options: Any) -> Client:
        """A client as `ident` (the owner's CLI by default) to every node, or to node `only`."""
        cfg = config.load(self.home)
        seed = natsauth.seed_path(cfg, ident).read_text().strip()
        urls = self.urls if only is None else [self.urls[only]]
        ca = str(self.out / "ca.pem") if self.tls else ""
        return await connect(urls, ident, ca_file=ca, nkeys_seed_str=seed, **options)

    async def make_streams(self, nc: Client, timeout: float = 60, replicas: int = 3) -> None:
        """Clawden's streams (three copies unless told), as a core service makes them: ensure_streams waits until
        the nodes have elected their JetStream meta leader (until then the API does not answer)."""
        await asyncio.wait_for(ensure_streams(nc.jetstream(), replicas=replicas), timeout)
