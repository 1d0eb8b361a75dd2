"""How a container reaches the vault (`[runner] vault_transport`): the choices as tables, the token's folder,
and the run spec a tcp-mode container gets, without touching Docker."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import msgspec
import pytest

from clawden.agentcontainer import vault_transport
from clawden.config import RunnerConfig
from services.runner.vaultroute import (
    VaultRoute,
    new_token,
    place_token,
    socket_route,
    tcp_problem,
    tcp_route,
    trust_folder,
)
from tests.runner.test_containers import spec as container_spec


@pytest.mark.parametrize(
    ("setting", "engine", "chosen"),
    [
        ("auto", "Docker Desktop", "tcp"),
        ("auto", "Debian GNU/Linux 12 (bookworm)", "socket"),
        ("auto", "", "socket"),  # docker info did not say: as on Linux
        ("socket", "Docker Desktop", "socket"),
        ("tcp", "Ubuntu 24.04 LTS", "tcp"),
    ],
)
def test_auto_means_tcp_on_docker_desktop_only(setting: str, engine: str, chosen: str) -> None:
    assert vault_transport(setting, engine) == chosen


def runner(**kw: object) -> RunnerConfig:
    return msgspec.convert({"vault_transport": "tcp", **kw}, RunnerConfig)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"vault_network": "clawden-vault"}, None),
        ({"vault_tcp_host": "unix:/home/me/.clawden/run/fwd.sock"}, None),
        ({}, "set runner.vault_network"),  # host.docker.internal, but no network to reach it by
        ({"vault_tcp_host": "unix:run/fwd.sock"}, "absolute path"),
        ({"vault_tcp_host": "a/b", "vault_network": "n"}, "not a host name"),
        ({"vault_tcp_host": "", "vault_network": "n"}, "not a host name"),
    ],
)
def test_tcp_settings_that_cannot_work_are_named(settings: dict[str, str], problem: str | None) -> None:
    found = tcp_problem(runner(**settings))
    assert found is None if problem is None else problem in (found or "")


def test_a_bad_transport_is_refused_when_the_config_loads() -> None:
    with pytest.raises(msgspec.ValidationError, match="vault_transport"):
        runner(vault_transport="carrier-pigeon")


@pytest.mark.parametrize(
    ("settings", "tls_name", "route"),
    [
        (
            {"vault_network": "clawden-vault"},
            "",
            VaultRoute("tcp://host.docker.internal:8471", None, "clawden-vault"),
        ),
        ({"vault_tcp_host": "::1", "vault_network": "n"}, "", VaultRoute("tcp://[::1]:8471", None, "n")),
        # the Linux test route: the forwarder's folder is mounted, the container keeps no network
        (
            {"vault_tcp_host": "unix:/srv/clawden/run/fwd/vault.sock"},
            "",
            VaultRoute("tcp+unix:/run/clawden/gateway/vault.sock", Path("/srv/clawden/run/fwd"), "none"),
        ),
        # a listener that speaks TLS (off loopback, or forced): the relay checks the name it dials...
        (
            {"vault_tcp_host": "vault.home.arpa", "vault_network": "n"},
            "vault.home.arpa",
            VaultRoute("tls://vault.home.arpa:8471", None, "n"),
        ),
        ({"vault_tcp_host": "::1", "vault_network": "n"}, "::1", VaultRoute("tls://[::1]:8471", None, "n")),
        # ...or, through a socket, the name the vault says its certificate has
        (
            {"vault_tcp_host": "unix:/srv/fwd/vault.sock"},
            "127.0.0.1",
            VaultRoute("tls+unix:/run/clawden/gateway/vault.sock#127.0.0.1", Path("/srv/fwd"), "none"),
        ),
    ],
)
def test_the_relay_dials_the_listener_by_name_or_through_a_mounted_socket(
    settings: dict[str, str], tls_name: str, route: VaultRoute
) -> None:
    assert tcp_route(runner(**settings), 8471, tls_name) == route


def test_tokens_are_256_random_bits_with_their_sha256() -> None:
    (one, one_hash), (two, _) = new_token(), new_token()
    assert one != two and one.startswith("clt_") and len(one) >= 4 + 43  # 32 bytes, url-safe base64
    assert len(one_hash) == 64 and one not in one_hash


def test_the_token_folder_holds_only_the_token_readable_by_its_owner(tmp_path: Path) -> None:
    folder = tmp_path / "relay" / "s-1"
    folder.mkdir(parents=True)
    (folder / "left-by-an-agent").write_text("x")
    place_token(folder, "clt_abc", None)
    assert [p.name for p in folder.iterdir()] == ["token"]
    assert (folder / "token").read_text() == "clt_abc"
    assert stat.S_IMODE((folder / "token").stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_socket_container_is_as_before(tmp_path: Path) -> None:
    route = socket_route(tmp_path / "gw")
    spec = dataclasses.replace(container_spec(tmp_path), gateway=route.gateway, gateway_dir=route.gateway_dir)
    kw = spec.run_kwargs()
    assert kw["network_mode"] == "none"
    assert kw["environment"]["CLAWDEN_GATEWAY_SOCKET"] == "/run/clawden/gateway/gateway.sock"
    assert "/run/clawden/relay" not in {m["Target"] for m in kw["mounts"]}


def test_a_tcp_container_gets_its_token_folder_and_no_token_in_its_environment(tmp_path: Path) -> None:
    spec = dataclasses.replace(
        container_spec(tmp_path),
        gateway="tcp://host.docker.internal:8471",
        gateway_dir=None,
        relay_dir=tmp_path / "relay",
        network="clawden-vault",
    )
    kw = spec.run_kwargs()
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in kw["mounts"]}
    assert mounts["/run/clawden/relay"] == (str(tmp_path / "relay"), False)  # the relay deletes the token
    assert "/run/clawden/gateway" not in mounts
    assert kw["network_mode"] == "clawden-vault"
    assert kw["environment"]["CLAWDEN_GATEWAY_SOCKET"] == "tcp://host.docker.internal:8471"
    assert not any("clt_" in v for v in kw["environment"].values())


def test_a_runner_on_another_host_writes_the_trust_folder_from_the_ca_the_vault_answered(tmp_path: Path) -> None:
    ca = "-----BEGIN CERTIFICATE-----\nthe gateway CA\n-----END CERTIFICATE-----\n"
    roots = tmp_path / "roots.pem"
    roots.write_text("the host's roots\n")
    vaults, own = tmp_path / "vault-host" / "trust", tmp_path / "home" / "run" / "trust"
    # the vault's folder is not on this host: the runner's own, the CA alone and a bundle with this host's roots
    assert trust_folder(vaults, ca, own, (str(tmp_path / "none.pem"), str(roots))) == own
    assert (own / "clawden-ca.pem").read_text() == ca
    assert (own / "bundle.pem").read_text() == ca + "\nthe host's roots\n"
    assert stat.S_IMODE((own / "bundle.pem").stat().st_mode) == 0o644 and not vaults.exists()
    assert trust_folder(vaults, ca, own, ()) == own and (own / "bundle.pem").read_text() == ca  # no roots here
    # the vault's host: its own folder, holding that CA, is the one mounted
    vaults.mkdir(parents=True)
    (vaults / "clawden-ca.pem").write_text(ca)
    assert trust_folder(vaults, ca, own, ()) == vaults
    assert trust_folder(vaults, "", own, ()) == vaults  # an older vault that does not send its CA
