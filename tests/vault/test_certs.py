"""The gateway CA and its leaves follow OneCLI's profile, and strict clients accept them."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from clawden.pki import CertificateAuthority, utc_now
from services.vault.certs import LeafCache, ListenerTls, write_trust_files
from tests.vault.conftest import RigFactory


def test_the_ca_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    key, cert = tmp_path / "keys" / "ca.key", tmp_path / "keys" / "ca.pem"
    ca = CertificateAuthority.load_or_create(key, cert, "Test CA")
    again = CertificateAuthority.load_or_create(key, cert, "Test CA")

    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert again.fingerprint == ca.fingerprint
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc > dt.timedelta(days=3600)


def test_half_a_ca_is_an_error_not_a_silent_new_ca(tmp_path: Path) -> None:
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    CertificateAuthority.load_or_create(key, cert, "Test CA")
    cert.unlink()
    with pytest.raises(FileNotFoundError, match="remove both"):
        CertificateAuthority.load_or_create(key, cert, "Test CA")


def test_a_leaf_has_san_eku_aki_and_lasts_a_day() -> None:
    ca = CertificateAuthority.create("Test CA")
    leaf, key = ca.issue("api.example.test")

    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["api.example.test"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(hours=24, minutes=5)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ip_leaf, _ = ca.issue("10.0.0.7")
    assert ip_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    )


async def test_a_strict_python_client_completes_tls_with_alpn_http11(tmp_path: Path) -> None:
    import asyncio

    ca = CertificateAuthority.create("Test CA")
    context = LeafCache(ca, tmp_path / "leaves").context_for("api.example.test")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    client.verify_flags |= ssl.VERIFY_X509_STRICT  # what Python 3.13 turns on by default
    client.set_alpn_protocols(["h2", "http/1.1"])
    try:
        reader, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname()[:2], ssl=client, server_hostname="api.example.test"
        )
        assert await reader.read() == b"ok"
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.close()
    finally:
        server.close()
    assert list((tmp_path / "leaves").iterdir()) == []  # the leaf's key file lived only while loading


def test_leaves_are_cached_and_renewed_before_they_expire(tmp_path: Path) -> None:
    cache = LeafCache(CertificateAuthority.create("Test CA"), tmp_path / "leaves")
    now = dt.datetime.now(dt.UTC)
    first = cache.context_for("a.test", now)
    assert cache.context_for("A.test", now + dt.timedelta(hours=22)) is first
    assert cache.context_for("a.test", now + dt.timedelta(hours=23, minutes=30)) is not first


async def test_a_tunnels_leaf_is_made_off_the_event_loop(rig: RigFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    made_on: list[int] = []
    build = LeafCache._build

    def recorded(cache: LeafCache, host: str, now: dt.datetime) -> tuple[ssl.SSLContext, dt.datetime]:
        made_on.append(threading.get_ident())
        return build(cache, host, now)

    monkeypatch.setattr(LeafCache, "_build", recorded)
    async with rig() as r, r.client() as http:
        answer = await http.get("https://api.example.test/v1/models")

    assert answer.status_code == 200
    assert len(made_on) == 1 and made_on[0] != threading.get_ident()  # not the thread every agent's traffic runs on


async def test_tunnels_opening_at_once_to_a_new_host_wait_for_one_leaf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = LeafCache(CertificateAuthority.create("Test CA"), tmp_path / "leaves")
    started, release = threading.Event(), threading.Event()
    builds: list[str] = []
    build = LeafCache._build

    def held(cache: LeafCache, host: str, now: dt.datetime) -> tuple[ssl.SSLContext, dt.datetime]:
        builds.append(host)
        started.set()
        release.wait(5)
        return build(cache, host, now)

    monkeypatch.setattr(LeafCache, "_build", held)
    tunnels = [asyncio.ensure_future(cache.context(host)) for host in ["new.test", "NEW.test", "new.test."] * 2]
    # Every tunnel asked before the leaf's making could start (the loop runs them first, in order).
    assert await asyncio.to_thread(started.wait, 5)
    release.set()
    contexts = await asyncio.gather(*tunnels)

    assert builds == ["new.test"]
    assert all(c is contexts[0] for c in contexts)
    assert await cache.context("new.test") is contexts[0]  # and it is kept


def test_trust_files_hold_the_ca_alone_and_with_the_system_roots(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("Test CA")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(CertificateAuthority.create("Some public root").cert_pem)
    ca_file, bundle = write_trust_files(ca, tmp_path / "trust", (str(tmp_path / "missing.pem"), str(roots)))

    assert ca_file.read_bytes() == ca.cert_pem
    assert bundle.read_bytes().startswith(ca.cert_pem) and bundle.read_bytes().endswith(roots.read_bytes())
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o644
    ssl.create_default_context(cafile=str(bundle))  # parses as a bundle


async def _served_serial(port: int, ca: CertificateAuthority, name: str) -> int:
    """The serial of the certificate the listener shows a client that checks `name` with the CA (an address:
    Python then sends no SNI, as the relay does dialing tls://<address>)."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def test_the_tcp_listeners_certificate_names_its_names_and_is_made_again_near_its_end(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("test gateway CA")
    tls = ListenerTls(ca, tmp_path / "listener", ("127.0.0.1", "vault.home.arpa"))
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    try:
        first = await _served_serial(port, ca, "127.0.0.1")
        assert await _served_serial(port, ca, "vault.home.arpa") == first  # a name sent by SNI: the same leaf
        tls._expires = utc_now() + dt.timedelta(minutes=30)  # as if 23.5 h had gone by: the next handshake renews
        renewed = await _served_serial(port, ca, "127.0.0.1")
        assert renewed != first and await _served_serial(port, ca, "127.0.0.1") == renewed
        with pytest.raises(ssl.SSLCertVerificationError):
            await _served_serial(port, ca, "127.0.0.2")  # a name it was not made for
    finally:
        server.close()
        await server.wait_closed()
    assert not list((tmp_path / "listener").iterdir())  # the leaf's key passed through a file, now gone
    with pytest.raises(ValueError, match="tcp_names"):
        ListenerTls(ca, tmp_path / "x", ())
