"""The gateway's certificates: the per-install CA (`clawden.pki.CertificateAuthority`, OneCLI's profile) and
cached per-host leaves, valid 24 h, whose TLS contexts offer ALPN ``http/1.1`` only. The CA key never leaves
the host: it lives in ``keys/`` (0600); containers get only the public certificate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets
import ssl
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from clawden.pki import CertificateAuthority, utc_now, write_atomic
from clawden.vaultfiles import BUNDLE_FILE, CA_FILE

log = logging.getLogger("clawden.vault")

LEAF_REFRESH_BEFORE = dt.timedelta(hours=1)
LEAF_CACHE_SIZE = 1024
# Where hosts keep their roots (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS); the first found is used.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


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
            write_atomic(path, data, 0o644)
    return ca_file, bundle_file


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
        now = now or utc_now()
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
