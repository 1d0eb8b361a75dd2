"""Certificates made on this machine, and what names a loopback host: one place for the vault's gateway CA (its
per-host leaves) and the NATS cluster's CA (its node certificates).

Every CA is ECDSA P-256, valid 10 years (keyCertSign, cRLSign, SKI), its key in a 0600 file that is never
rewritten; leaves are valid from 5 minutes ago, with SAN, the EKU asked for, SKI and the Authority Key
Identifier that Python's ``ssl`` insists on. OneCLI's profile, which the gateway follows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("clawden.pki")

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(hours=24)
LEAF_BACKDATE = dt.timedelta(minutes=5)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (for a 0600 file)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def utc_now() -> dt.datetime:
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
        now = now or utc_now()
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
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem_key(ca.key))
        cert_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cert_file, ca.cert_pem, 0o644)
        log.info("created the CA %s (sha256 %s)", cert_file, ca.fingerprint)
        return ca

    def issue(
        self,
        host: str,
        now: dt.datetime | None = None,
        *,
        also: tuple[str, ...] = (),
        validity: dt.timedelta = LEAF_VALIDITY,
        client: bool = False,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A leaf for ``host`` (a name or an IP address) and the names in ``also``, valid 24 h unless told, for
        TLS servers, and clients too with ``client`` (a NATS node's routes verify each other)."""
        now = now or utc_now()
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [_general_name(n) for n in dict.fromkeys((host, *also))]
        usage = [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])]
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - LEAF_BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
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
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert, key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
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
