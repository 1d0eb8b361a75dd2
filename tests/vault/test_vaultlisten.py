"""How the vault's TCP listener speaks (clawden/vaultlisten.py, pure), as a table: TLS or not, and the names
its certificate carries."""

from __future__ import annotations

import pytest

from clawden import vaultlisten


@pytest.mark.parametrize(
    ("mode", "host", "on"),
    [
        ("auto", "127.0.0.1", False),
        ("auto", "localhost", False),
        ("auto", "::1", False),
        ("auto", "0.0.0.0", True),  # every address: other hosts reach it
        ("auto", "vault.home.arpa", True),
        (True, "127.0.0.1", True),  # forced, as the tests do
        (False, "vault.home.arpa", False),
    ],
)
def test_the_listener_speaks_tls_off_loopback_unless_told(mode: bool | str, host: str, on: bool) -> None:
    assert vaultlisten.tls_on(mode, host) is on


@pytest.mark.parametrize(
    ("host", "extra", "names"),
    [
        ("127.0.0.1", [], ("127.0.0.1",)),
        ("vault.home.arpa", ["vault", "vault.home.arpa"], ("vault.home.arpa", "vault")),
        ("0.0.0.0", ["vault.home.arpa"], ("vault.home.arpa",)),
        ("0.0.0.0", [], ("box",)),  # a wildcard and no names: the machine's own
        ("::", [], ("box",)),
        ("", ["0.0.0.0"], ("box",)),
    ],
)
def test_the_listeners_certificate_names_its_address_and_the_names_runners_dial(
    host: str, extra: list[str], names: tuple[str, ...]
) -> None:
    assert vaultlisten.listener_names(host, extra, ("box", "")) == names


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8471", "127.0.0.1", 8471),
        ("[::1]:8471", "::1", 8471),
        ("0.0.0.0:0", "0.0.0.0", 0),  # the vault picks the port
        (":8471", "", 8471),  # every address, as the vault binds it
        ("127.0.0.1", "", None),  # no port
        ("127.0.0.1:http", "127.0.0.1", None),
        ("127.0.0.1:70000", "127.0.0.1", None),
    ],
)
def test_the_listen_address_is_read_as_the_vault_binds_it(listen: str, host: str, port: int | None) -> None:
    assert vaultlisten.split_listen(listen) == (host, port)
