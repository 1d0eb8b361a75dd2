"""`clawden cluster init`: the nats-server configurations of a three-node cluster for one install.

Each node gets the embedded server's users and permissions (`natsauth.server_config`, the same nkeys),
its own JetStream store, routes to the others, and TLS between nodes and toward clients when a node is
off loopback. The decisions (ports, names, what each file says) are pure; the writing is at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawden import config as config_mod
from clawden import natsauth
from clawden.control import ControlError
from clawden.registry import installed_channels

if TYPE_CHECKING:  # subscriptable only to the type checker; cryptography loads only where certificates are made
    from clawden.pki import CertificateAuthority

    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

NODES = 3  # what R3 streams need; a cluster of 5 would want R5, which `nats.replicas` does not offer
ROUTE_USER = "route"
CERT_VALIDITY = dt.timedelta(days=825)  # rerun `clawden cluster init` before then: it keeps the CA


@dataclass(frozen=True)
class Node:
    index: int  # 1-based
    host: str
    client_port: int
    route_port: int

    @property
    def name(self) -> str:
        return f"node-{self.index}"


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str


def plan(hosts: list[str], nodes: int, client_port: int, route_port: int) -> list[Node]:
    """The nodes, in order. Nodes sharing a host (three on one machine) take the next ports, so none clash."""
    if nodes != NODES:
        raise ControlError(f"a cluster has {NODES} nodes (--nodes {NODES}): JetStream's R3 streams need three")
    hosts = hosts or ["127.0.0.1"]
    if len(hosts) == 1:
        hosts = hosts * nodes
    if len(hosts) != nodes:
        raise ControlError(f"give one --host per node ({nodes}), or one for all of them; got {len(hosts)}")
    out: list[Node] = []
    for i, host in enumerate(hosts):
        same = sum(1 for earlier in hosts[:i] if earlier == host)
        out.append(Node(i + 1, host, client_port + same, route_port + same))
    return out


def wants_tls(nodes: list[Node], asked: bool | None) -> bool:
    """TLS is on off loopback, always; on one machine only when asked (`--tls`)."""
    from clawden.pki import is_loopback  # with cryptography: loaded only when a cluster is planned

    off_loopback = any(not is_loopback(n.host) for n in nodes)
    if asked is False and off_loopback:
        raise ControlError("--no-tls is only for nodes on loopback: between hosts the bus carries people's messages")
    return off_loopback or bool(asked)


def client_urls(nodes: list[Node], tls: bool) -> list[str]:
    scheme = "tls" if tls else "nats"
    return [f"{scheme}://{n.host}:{n.client_port}" for n in nodes]


def node_config(
    base: dict[str, Any],
    node: Node,
    nodes: list[Node],
    *,
    cluster_name: str,
    store_dir: str,
    route_secret: str,
    tls: TlsFiles | None,
) -> dict[str, Any]:
    """One node's nats.conf: the single server's (`base`: users, permissions) with its own name, listen
    address and store, plus the cluster block."""
    route_tls = {"tls": {"cert_file": tls.cert, "key_file": tls.key, "ca_file": tls.ca, "verify": True}} if tls else {}
    conf = base | {
        "server_name": f"{cluster_name}-{node.name}",
        "listen": f"{node.host}:{node.client_port}",
        "jetstream": natsauth.jetstream(store_dir),
        "cluster": {
            "name": cluster_name,
            "listen": f"{node.host}:{node.route_port}",
            "authorization": {"user": ROUTE_USER, "password": route_secret},
            "routes": [
                f"nats://{ROUTE_USER}:{route_secret}@{other.host}:{other.route_port}"
                for other in nodes
                if other != node
            ],
            **route_tls,
        },
    }
    if tls:
        conf["tls"] = {"cert_file": tls.cert, "key_file": tls.key, "ca_file": tls.ca}
    return conf


def client_settings(nodes: list[Node], tls: bool, ca_file: str) -> str:
    """The `[nats]` lines every host's config.toml gets."""
    lines = ["[nats]", f"url = {json.dumps(client_urls(nodes, tls))}", "replicas = 3"]
    if tls:
        lines.append(f"ca_file = {json.dumps(ca_file)}")
    return "\n".join(lines) + "\n"


# ---- the files ----


def _write(path: Path, text: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(text.encode() if isinstance(text, str) else text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def route_secret(keys: Path) -> str:
    """The routes' password, made once and kept (in keys/, 0600), so a rerun keeps the running nodes talking."""
    path = keys / "nats-cluster" / "route-secret"
    if not path.exists():
        _write(path, secrets.token_urlsafe(32), 0o600)
    return path.read_text().strip()


def cluster_ca(keys: Path, out: Path) -> CertificateAuthority:
    """The cluster's own CA, made once: its key and certificate stay in keys/nats-cluster/ on the machine that ran
    init, and the certificate is copied to `ca.pem` in the output folder (every node and client trusts it and
    nothing else)."""
    from clawden.pki import CertificateAuthority

    folder = keys / "nats-cluster"
    try:
        ca = CertificateAuthority.load_or_create(folder / "ca-key.pem", folder / "ca.pem", "Clawden NATS cluster CA")
    except (FileNotFoundError, ValueError) as exc:
        raise ControlError(f"{exc} (remove keys/nats-cluster/ca*.pem to make a new cluster CA)") from None
    _write(out / "ca.pem", ca.cert_pem, 0o644)
    return ca


def node_certificate(ca: CertificateAuthority, node: Node) -> tuple[bytes, bytes]:
    """A node's certificate: server and client use (the routes verify each other), for its host and loopback."""
    from cryptography.hazmat.primitives import serialization

    from clawden.pki import pem_key

    cert, key = ca.issue(node.host, also=("localhost", "127.0.0.1"), validity=CERT_VALIDITY, client=True)
    return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)


def write_cluster(cfg: config_mod.Config, nodes: list[Node], out: Path, *, tls: bool, store_root: Path) -> list[Path]:
    """Every node's folder (nats.conf, and with TLS its certificate and key) under `out`; returns the configs."""
    single = natsauth.server_config(cfg, tuple(installed_channels()))
    base = {k: v for k, v in single.items() if k not in ("server_name", "listen", "jetstream")}
    secret = route_secret(cfg.keys_dir)
    ca = cluster_ca(cfg.keys_dir, out) if tls else None
    written = []
    for node in nodes:
        folder = out / node.name
        files = None
        if ca is not None:
            cert, key = node_certificate(ca, node)
            files = TlsFiles(str(out / "ca.pem"), str(folder / "node.pem"), str(folder / "node-key.pem"))
            _write(Path(files.cert), cert, 0o644)
            _write(Path(files.key), key, 0o600)
        conf = node_config(
            base,
            node,
            nodes,
            cluster_name=natsauth.server_name(cfg),
            store_dir=str(store_root / node.name),
            route_secret=secret,
            tls=files,
        )
        _write(folder / "nats.conf", json.dumps(conf, indent=2) + "\n", 0o600)
        written.append(folder / "nats.conf")
    _write(out / "clawden.toml", client_settings(nodes, tls, str(out / "ca.pem")), 0o644)
    return written


def cmd_init(args: argparse.Namespace) -> int:
    cfg = config_mod.load(Path(args.home).expanduser() if args.home else None)
    nodes = plan(args.host or [], args.nodes, args.client_port, args.route_port)
    tls = wants_tls(nodes, args.tls)
    out = Path(args.out).expanduser().resolve() if args.out else cfg.path("cluster")
    store = Path(args.store_dir).expanduser().resolve() if args.store_dir else out
    for conf in write_cluster(cfg, nodes, out, tls=tls, store_root=store):
        print(f"wrote {conf}")
    print(f"nodes: {', '.join(client_urls(nodes, tls))}{' (TLS)' if tls else ''}")
    print(f"start each with: {server_binary()} -c <node folder>/nats.conf")
    print(f"then give every host's config.toml these lines ({out / 'clawden.toml'}):")
    print((out / "clawden.toml").read_text(), end="")
    return 0


def server_binary() -> str:
    from clawden import natsserver

    return str(natsserver.binary())


def register(sub: Sub) -> None:
    cluster = sub.add_parser("cluster", help="a NATS cluster as the bus (several hosts)")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    init = cluster_sub.add_parser("init", help="write the nats-server configurations of a three-node cluster")
    init.add_argument("--nodes", type=int, default=NODES, help="nodes in the cluster (3)")
    init.add_argument(
        "--host",
        action="append",
        help="a node's address, once per node in order (default: all on 127.0.0.1, for a cluster on one machine)",
    )
    init.add_argument("--client-port", type=int, default=4222, help="where clients connect (4222)")
    init.add_argument("--route-port", type=int, default=6222, help="where the nodes meet (6222)")
    init.add_argument("--out", help="folder for the node folders and ca.pem (default: <home>/cluster)")
    init.add_argument("--store-dir", help="JetStream's stores, one folder per node under it (default: --out)")
    tls = init.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", default=None, help="TLS even on loopback")
    tls.add_argument("--no-tls", dest="tls", action="store_false", help="no TLS (loopback only)")
    init.set_defaults(func=cmd_init)
