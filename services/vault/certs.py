"""The gateway's certificates: the per-install CA (`clawden.pki.CertificateAuthority`, OneCLI's profile) and
cached per-host leaves, valid 24 h, whose TLS contexts offer ALPN ``http/1.1`` only. The CA key never leaves
the host: it lives in ``keys/`` (0600); containers get only the public certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
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
    Making one takes about 2 ms (key, signature, the file, loading it), so the gateway asks ``context``,
    which makes it in a thread, once for every tunnel to that host that opens meanwhile.
    """

    def __init__(self, ca: CertificateAuthority, work_dir: Path, size: int = LEAF_CACHE_SIZE) -> None:
        self._ca = ca
        self._work_dir = work_dir
        self._size = size
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, dt.datetime]] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[str, asyncio.Future[tuple[ssl.SSLContext, dt.datetime]]] = {}
        work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        work_dir.chmod(0o700)

    def context_for(self, host: str, now: dt.datetime | None = None) -> ssl.SSLContext:
        """The host's context, its leaf made here and now when it has none (blocking: see ``context``)."""
        host = host.lower().rstrip(".")
        now = now or utc_now()
        if (cached := self._cached(host, now)) is not None:
            return cached
        context, expires = self._build(host, now)
        self._keep(host, context, expires)
        return context

    async def context(self, host: str, now: dt.datetime | None = None) -> ssl.SSLContext:
        """The host's context, a missing leaf made in a thread; tunnels to the host that open while it is being
        made wait for that one. A ValueError (a name no certificate can hold) reaches each of them."""
        host = host.lower().rstrip(".")
        now = now or utc_now()
        if (cached := self._cached(host, now)) is not None:
            return cached
        making = self._making.get(host)
        if making is None:
            making = self._making[host] = asyncio.ensure_future(asyncio.to_thread(self._build, host, now))
            making.add_done_callback(functools.partial(self._made, host))
        # Shielded: a tunnel whose agent left must not cancel the leaf the others wait for.
        context, _ = await asyncio.shield(making)
        return context

    async def settled(self) -> None:
        """Returns once no leaf is being made (at shutdown: none is left writing into the folder)."""
        await asyncio.gather(*self._making.values(), return_exceptions=True)

    def _made(self, host: str, making: asyncio.Future[tuple[ssl.SSLContext, dt.datetime]]) -> None:
        if self._making.get(host) is making:
            del self._making[host]
        if not making.cancelled() and making.exception() is None:  # a failure goes to the waiters alone
            self._keep(host, *making.result())

    def _cached(self, host: str, now: dt.datetime) -> ssl.SSLContext | None:
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and cached[1] - LEAF_REFRESH_BEFORE > now:
                self._contexts.move_to_end(host)
                return cached[0]
        return None

    def _keep(self, host: str, context: ssl.SSLContext, expires: dt.datetime) -> None:
        with self._lock:
            self._contexts[host] = (context, expires)
            self._contexts.move_to_end(host)
            while len(self._contexts) > self._size:
                self._contexts.popitem(last=False)

    def _build(self, host: str, now: dt.datetime) -> tuple[ssl.SSLContext, dt.datetime]:
        return server_context(self._ca, self._work_dir, (host,), now)


def server_context(
    ca: CertificateAuthority, work_dir: Path, names: tuple[str, ...], now: dt.datetime
) -> tuple[ssl.SSLContext, dt.datetime]:
    """A server context with a fresh 24 h leaf for `names` (the first its subject), and when the leaf ends."""
    cert, key = ca.issue(names[0], now, also=names[1:])
    password = secrets.token_bytes(24)
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    fd, name = tempfile.mkstemp(dir=work_dir, prefix="leaf-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(chain + pem_key)
        context.load_cert_chain(name, password=password)
    finally:
        os.unlink(name)
    return context, cert.not_valid_after_utc


class ListenerTls:
    """The TCP listener's TLS (`[vault] tcp_tls`): a leaf from the gateway CA for the listener's names, made again
    at the first handshake within an hour of its end, so a vault that runs for months never serves an expired one.
    `context` is what the listener serves with; each handshake switches to the current leaf's context."""

    def __init__(self, ca: CertificateAuthority, work_dir: Path, names: tuple[str, ...]) -> None:
        if not names:
            raise ValueError("the listener's certificate needs a name: set [vault] tcp_names")
        work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ca, self._work_dir, self.names = ca, work_dir, names
        self._current, self._expires = server_context(ca, work_dir, names, utc_now())
        self.context = self._current
        self.context.sni_callback = self._pick

    def current(self, now: dt.datetime | None = None) -> ssl.SSLContext:
        """The context with a leaf that is good for at least another hour."""
        now = now or utc_now()
        if self._expires - LEAF_REFRESH_BEFORE <= now:
            self._current, self._expires = server_context(self._ca, self._work_dir, self.names, now)
            log.info("the TCP listener's certificate was made again (%s)", ", ".join(self.names))
        return self._current

    def _pick(self, sock: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _context: ssl.SSLContext) -> None:
        # OpenSSL asks this at every ClientHello, with or without SNI (a client dialing an address sends none).
        sock.context = self.current()
