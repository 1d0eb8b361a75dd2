"""What `clawden cluster init` leaves on disk: private files private, the CA and route password kept across
runs, and nothing a node does not need in the folder that is copied to it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from clawden import natsauth, setup
from clawden.cli.commands import cluster
from clawden.registry import installed_channels


def init(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawden", "--home", str(home), "cluster", "init", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_files_are_private_and_a_rerun_keeps_the_ca_and_the_route_password(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path / "home")
    hosts = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    nodes = cluster.plan(hosts, 3, 4222, 6222)
    first = cluster.write_cluster(cfg, nodes, tmp_path / "one", tls=True, store_root=tmp_path / "store")
    again = cluster.write_cluster(cfg, nodes, tmp_path / "two", tls=True, store_root=tmp_path / "store")
    assert (tmp_path / "one" / "ca.pem").read_bytes() == (tmp_path / "two" / "ca.pem").read_bytes()
    one, two = (json.loads(p.read_text()) for p in (first[0], again[0]))
    assert one["cluster"]["authorization"] == two["cluster"]["authorization"]
    for path in (*first, tmp_path / "one" / "node-1" / "node-key.pem"):
        assert path.stat().st_mode & 0o077 == 0, path
    # The folder a host gets holds no CA key and no seed.
    copied = {p.name for p in (tmp_path / "one").rglob("*") if p.is_file()}
    assert copied == {"ca.pem", "clawden.toml", "nats.conf", "node.pem", "node-key.pem"}
    # Node 2's certificate names its host, is signed by the CA, and serves both ends of a route.
    cert = x509.load_pem_x509_certificate((tmp_path / "one" / "node-2" / "node.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "one" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.1.0.2" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    # Every identity of the embedded server's config is a user of each node, with the same permissions.
    assert one["authorization"] == natsauth.server_config(cfg, tuple(installed_channels()))["authorization"]


@pytest.mark.process  # the `clawden` command itself
def test_the_command_refuses_plainly_and_writes_nothing(tmp_path: Path) -> None:
    setup.init(tmp_path / "home")
    refused = init(tmp_path / "home", "--host", "10.1.0.1", "--host", "10.1.0.2", "--host", "10.1.0.3", "--no-tls")
    assert refused.returncode == 1
    assert "--no-tls is only for nodes on loopback" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "home" / "cluster").exists()
    done = init(tmp_path / "home", "--client-port", "14222")
    assert done.returncode == 0, done.stderr
    assert 'url = ["nats://127.0.0.1:14222", "nats://127.0.0.1:14223", "nats://127.0.0.1:14224"]' in done.stdout
