"""The `[nats]` settings of a cluster and the plan `clawden cluster init` writes, as tables (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawden.bus.connection import server_list
from clawden.cli.commands import cluster
from clawden.config import ConfigError, NatsConfig, load, nats_problem
from clawden.control import ControlError


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("", ()),
        ("nats://a:1", ("nats://a:1",)),
        ("nats://a:1, nats://b:2,nats://a:1", ("nats://a:1", "nats://b:2")),
        (["nats://a:1", "nats://b:2", "nats://c:3"], ("nats://a:1", "nats://b:2", "nats://c:3")),
    ],
)
def test_nats_url_is_one_server_or_a_list(url: str | list[str], servers: tuple[str, ...]) -> None:
    assert NatsConfig(url=url).servers == servers
    assert server_list(",".join(servers)) == list(servers)


@pytest.mark.parametrize(
    ("nats", "problem"),
    [
        (NatsConfig(), None),
        (NatsConfig(url=["nats://a:1", "nats://b:2", "nats://c:3"], replicas=3), None),
        (NatsConfig(url="nats://a:1", replicas=3), None),  # one seed address; the client learns the rest
        (NatsConfig(replicas=2), "must be 1 (one server) or 3"),
        (NatsConfig(url=["nats://a:1"] * 3, replicas=0), "must be 1 (one server) or 3"),
        (NatsConfig(replicas=3), "the embedded server is one server"),
        (NatsConfig(url=["nats://a:1", "http://b:2"]), "'http://b:2' is not a NATS address"),
        (NatsConfig(url="tls://a:1", ca_file="/nonexistent/ca.pem"), "is not a file"),
    ],
)
def test_nats_settings_are_checked(nats: NatsConfig, problem: str | None) -> None:
    found = nats_problem(nats)
    assert found == problem if problem is None else problem in (found or "")


def test_a_list_in_config_toml_and_a_comma_list_in_the_environment_both_work(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[nats]\nurl = ["nats://a:1", "nats://b:2", "nats://c:3"]\nreplicas = 3\n')
    cfg = load(tmp_path, {})
    assert cfg.nats.servers == ("nats://a:1", "nats://b:2", "nats://c:3") and not cfg.embedded_nats
    assert cfg.nats_url == "nats://a:1,nats://b:2,nats://c:3"
    env = load(tmp_path, {"CLAWDEN_NATS_URL": "nats://x:1,nats://y:2", "CLAWDEN_NATS_REPLICAS": "1"})
    assert env.nats.servers == ("nats://x:1", "nats://y:2") and env.nats.replicas == 1


def test_a_bad_replica_count_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[nats]\nreplicas = 5\n")
    with pytest.raises(ConfigError, match=r"nats\.replicas is 5: it must be 1"):
        load(tmp_path, {})


def test_three_nodes_on_one_machine_take_consecutive_ports() -> None:
    nodes = cluster.plan([], 3, 4222, 6222)
    assert [(n.name, n.host, n.client_port, n.route_port) for n in nodes] == [
        ("node-1", "127.0.0.1", 4222, 6222),
        ("node-2", "127.0.0.1", 4223, 6223),
        ("node-3", "127.0.0.1", 4224, 6224),
    ]


def test_three_hosts_use_the_same_ports() -> None:
    nodes = cluster.plan(["10.1.0.1", "10.1.0.2", "nas.home"], 3, 4222, 6222)
    assert {(n.client_port, n.route_port) for n in nodes} == {(4222, 6222)}


@pytest.mark.parametrize(
    ("hosts", "nodes", "error"),
    [
        (["a", "b"], 3, "one --host per node"),
        ([], 5, "a cluster has 3 nodes"),
        ([], 1, "a cluster has 3 nodes"),
    ],
)
def test_a_cluster_that_cannot_hold_r3_streams_is_refused(hosts: list[str], nodes: int, error: str) -> None:
    with pytest.raises(ControlError, match=error):
        cluster.plan(hosts, nodes, 4222, 6222)


@pytest.mark.parametrize(
    ("hosts", "asked", "tls"),
    [
        ([], None, False),
        ([], True, True),
        (["127.0.0.1", "localhost", "127.0.0.2"], False, False),
        (["10.1.0.1", "10.1.0.2", "10.1.0.3"], None, True),
        (["10.1.0.1", "10.1.0.2", "10.1.0.3"], True, True),
    ],
)
def test_tls_is_on_off_loopback(hosts: list[str], asked: bool | None, tls: bool) -> None:
    assert cluster.wants_tls(cluster.plan(hosts, 3, 4222, 6222), asked) is tls


def test_tls_cannot_be_turned_off_between_hosts() -> None:
    nodes = cluster.plan(["10.1.0.1", "10.1.0.2", "10.1.0.3"], 3, 4222, 6222)
    with pytest.raises(ControlError, match="only for nodes on loopback"):
        cluster.wants_tls(nodes, False)


def test_a_node_keeps_the_single_servers_users_and_routes_to_the_others() -> None:
    nodes = cluster.plan(["10.1.0.1", "10.1.0.2", "10.1.0.3"], 3, 4222, 6222)
    base = {"authorization": {"users": [{"nkey": "UABC", "permissions": {}}]}}
    tls = cluster.TlsFiles("/c/ca.pem", "/c/node-2/node.pem", "/c/node-2/node-key.pem")
    conf = cluster.node_config(
        base, nodes[1], nodes, cluster_name="clawden-x", store_dir="/s/node-2", route_secret="pw", tls=tls
    )
    assert conf["authorization"] == base["authorization"]
    assert conf["server_name"] == "clawden-x-node-2" and conf["listen"] == "10.1.0.2:4222"
    assert conf["jetstream"] == {"store_dir": "/s/node-2", "sync_interval": "always"}  # on disk before the ack
    assert conf["cluster"]["name"] == "clawden-x" and conf["cluster"]["listen"] == "10.1.0.2:6222"
    assert conf["cluster"]["routes"] == ["nats://route:pw@10.1.0.1:6222", "nats://route:pw@10.1.0.3:6222"]
    assert conf["cluster"]["authorization"] == {"user": "route", "password": "pw"}
    assert conf["cluster"]["tls"]["verify"] is True  # a node proves itself to the others, both ways
    assert conf["tls"] == {"cert_file": tls.cert, "key_file": tls.key, "ca_file": tls.ca}


def test_clients_are_told_every_node_the_replica_count_and_the_ca() -> None:
    nodes = cluster.plan(["10.1.0.1", "10.1.0.2", "10.1.0.3"], 3, 4222, 6222)
    text = cluster.client_settings(nodes, True, "/c/ca.pem")
    assert text == (
        '[nats]\nurl = ["tls://10.1.0.1:4222", "tls://10.1.0.2:4222", "tls://10.1.0.3:4222"]\n'
        'replicas = 3\nca_file = "/c/ca.pem"\n'
    )
