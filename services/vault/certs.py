"""The gateway's certificates: a per-install ECDSA P-256 CA and cached per-host leaves.

The profile follows OneCLI's: CA valid 10 years (keyCertSign, cRLSign, SKI); leaves valid from
5 minutes ago to 24 h ahead, with SAN, serverAuth EKU, SKI and the Authority Key Identifier that
Python's ``ssl`` insists on; the TLS context offers ALPN ``http/1.1`` only. The CA key never leaves
the host: it lives in ``keys/`` (0600); containers get only the public certificate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import secrets
import ssl
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clawden.vaultfiles import BUNDLE_FILE, CA_FILE

log = logging.getLogger("clawden.vault")

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(hours=24)
LEAF_BACKDATE = dt.timedelta(minutes=5)
LEAF_REFRESH_BEFORE = dt.timedelta(hours=1)
LEAF_CACHE_SIZE = 1024
# Where hosts keep their roots (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS); the first found is used.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.cert.subject.rfc4514_string()})"

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    @classmethod
    def create(cls, common_name: str, now: dt.datetime | None = None) -> CertificateAuthority:
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Clawden"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, key_file: Path, cert_file: Path, common_name: str) -> CertificateAuthority:
        """Load the CA, or create it once; the key file is 0600 and is never rewritten."""
        if key_file.exists() and cert_file.exists():
            mode = key_file.stat().st_mode & 0o777
            if mode & 0o077:
                log.warning("%s was readable by others (mode %o); made it 0600", key_file, mode)
                key_file.chmod(0o600)
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
                raise ValueError(f"{cert_file} does not belong to the key in {key_file}")
            return cls(cert, key)
        if key_file.exists() or cert_file.exists():
            # Half a CA: regenerating would silently break every container that trusts the old one.
            missing = cert_file if key_file.exists() else key_file
            raise FileNotFoundError(f"{missing} is missing; remove both CA files to make a new CA")
        ca = cls.create(common_name)
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem_key = ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem_key)
        cert_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cert_file, ca.cert_pem, 0o644)
        log.info("created the gateway CA %s (sha256 %s)", cert_file, ca.fingerprint)
        return ca

    def issue(self, host: str, now: dt.datetime | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf for ``host`` (a name or an IP address), valid 24 h."""
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE)
            .not_valid_after(now + LEAF_VALIDITY)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


def write_trust_files(
    ca: CertificateAuthority, trust_dir: Path, system_bundles: tuple[str, ...] = SYSTEM_BUNDLES
) -> tuple[Path, Path]:
    """The public files containers mount: the CA alone, and a bundle of the host's roots plus the CA.

    Variables that replace the default roots (SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
    GIT_SSL_CAINFO) get the bundle; NODE_EXTRA_CA_CERTS, which adds to Node's roots, gets the CA.
    """
    trust_dir.mkdir(parents=True, exist_ok=True)
    trust_dir.chmod(0o755)
    ca_file = trust_dir / CA_FILE
    bundle_file = trust_dir / BUNDLE_FILE
    roots = b""
    for candidate in system_bundles:
        with contextlib.suppress(OSError):
            roots = Path(candidate).read_bytes()
            break
    bundle = ca.cert_pem + b"\n" + roots if roots else ca.cert_pem
    for path, data in ((ca_file, ca.cert_pem), (bundle_file, bundle)):
        if not path.exists() or path.read_bytes() != data:
            _write_atomic(path, data, 0o644)
    return ca_file, bundle_file


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class LeafCache:
    """Server-side TLS contexts per host, each with its own 24 h leaf, rebuilt an hour before expiry.

    ``ssl`` loads certificates only from files, so each leaf passes through a 0700 folder,
    its key encrypted with a one-time password, and is deleted as soon as it is loaded.
    """

    def __init__(self, ca: CertificateAuthority, work_dir: Path, size: int = LEAF_CACHE_SIZE) -> None:
        self._ca = ca
        self._work_dir = work_dir
        self._size = size
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()
        work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        work_dir.chmod(0o700)

    def context_for(self, host: str, now: dt.datetime | None = None) -> ssl.SSLContext:
        host = host.lower().rstrip(".")
        now = now or _now()
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and cached[1] - LEAF_REFRESH_BEFORE > now:
                self._contexts.move_to_end(host)
                return cached[0]
        context, expires = self._build(host, now)
        with self._lock:
            self._contexts[host] = (context, expires)
            self._contexts.move_to_end(host)
            while len(self._contexts) > self._size:
                self._contexts.popitem(last=False)
        return context

    def _build(self, host: str, now: dt.datetime) -> tuple[ssl.SSLContext, dt.datetime]:
        cert, key = self._ca.issue(host, now)
        password = secrets.token_bytes(24)
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self._ca.cert_pem
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        fd, name = tempfile.mkstemp(dir=self._work_dir, prefix="leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(chain + pem_key)
            context.load_cert_chain(name, password=password)
        finally:
            os.unlink(name)
        return context, cert.not_valid_after_utc
