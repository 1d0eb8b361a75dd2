"""The email bridge: IMAP IDLE (or polling) in, SMTP submission out (aioimaplib, aiosmtplib). A thread is a chat.

Settings (`[channels.email]` in config.toml, or `CLAWDEN_EMAIL_<KEY>`): `address` (the assistant's), `name`,
`username` (default: the address), `imap_host`, `imap_port`, `imap_security` (`tls` or `none`), `smtp_host`,
`smtp_port`, `smtp_security` (`starttls`, `tls` or `none`), `mailbox`, `idle`, `poll_interval`, `idle_renew`, `ca_file`,
`allow` (addresses or `@domains` whose mail may reach an agent; empty: the router's policy alone decides),
`trusted_servers` (authserv-ids whose Authentication-Results count), `require_authentication`, `max_file_mb`,
`send_deadline`. The password comes from `CLAWDEN_EMAIL_TOKEN` or `keys/email` (mode 0600).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

import aioimaplib
import aiosmtplib

from clawden.backoff import backoff
from clawden.bridgeconfig import BridgeConfigError, channel_settings, read_secret
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.channels.bridge import Bridge, ButtonRef, Capabilities, Inbound
from services.channels.mail import core
from services.channels.mail.store import MailStore
from services.channels.reach import Trouble, call_trouble, why_unreachable
from services.channels.retry import Kind, PlatformError, RetryPolicy
from services.channels.service import serve

log = logging.getLogger("clawden.channels.email")

CHANNEL = "email"
_FETCHED = re.compile(rb"UID (\d+)")
_UIDVALIDITY = re.compile(r"UIDVALIDITY (\d+)")
# A login the server declines for now, not for its credentials (RFC 5530 response codes; Dovecot's and others' words
# for too many connections): a limit it asks the bridge to wait out, or a part of it that is down.
_HELD_BACK = re.compile(r"\[LIMIT\]|too many|maximum number of connections", re.IGNORECASE)
_DOWN_FOR_NOW = re.compile(r"\[UNAVAILABLE\]", re.IGNORECASE)
# How the owner mends a password the server refuses (the bridge restarts with a new keys/email of its own accord).
MAIL_FIX = (
    "put the mailbox password in keys/email (`clawden channels login email` checks it and writes it there); the "
    "bridge notices and restarts with it; `clawden doctor` tries both logins"
)
# Seconds between IMAP logins while the server refuses the password: only a person can mend it, and a server's
# fail2ban bans an address after a few refused logins (IMAP and SMTP alike) within minutes. Also the pace at which a
# held SMTP trouble (a refused login, an untrusted certificate) is checked again while nothing is sent.
REFUSED_RETRY = 600.0
# OpenSSL's verify codes for a certificate that is valid but not for the name or address the bridge asked for.
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


@dataclass(frozen=True)
class MailSettings:
    address: str
    password: str
    name: str = "Clawden"
    username: str = ""
    imap_host: str = "127.0.0.1"
    imap_port: int = 993
    imap_security: str = "tls"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 587
    smtp_security: str = "starttls"
    mailbox: str = "INBOX"
    idle: bool = True  # false: poll even where the server has IDLE
    poll_interval: float = 60.0  # servers without IDLE (or with idle off) are asked this often
    idle_renew: float = 300.0  # IDLE is restarted this often (RFC 9051 asks for less than 29 minutes)
    allow: tuple[str, ...] = ()
    trusted_servers: tuple[str, ...] = ()
    require_authentication: bool = False
    max_file_bytes: int = 10 * 1024 * 1024
    timeout: float = 30.0
    ca_file: str = ""  # a CA bundle to trust besides the system's (a server with its own certificate)

    @property
    def login(self) -> str:
        return self.username or self.address

    @classmethod
    def load(cls, cfg: Config, environ: dict[str, str] | None = None) -> MailSettings:
        return cls.of(channel_settings(cfg, CHANNEL, environ), lambda: read_secret(cfg, CHANNEL, environ))

    @classmethod
    def of(cls, s: dict[str, str], password: Callable[[], str]) -> MailSettings:
        """From `[channels.email]` values; the password is read only once the values make sense."""
        address = s.get("address", "").strip().lower()
        if "@" not in address:
            raise BridgeConfigError("no email address: set [channels.email] address (or CLAWDEN_EMAIL_ADDRESS)")
        host = s.get("imap_host", "")
        if not host:
            raise BridgeConfigError("no IMAP server: set [channels.email] imap_host")
        imap_security = s.get("imap_security", "tls")
        smtp_security = s.get("smtp_security", "starttls")
        if imap_security not in ("tls", "none") or smtp_security not in ("tls", "starttls", "none"):
            raise BridgeConfigError("imap_security is tls or none; smtp_security is starttls, tls or none")

        def words(key: str) -> tuple[str, ...]:
            return tuple(w.strip().lower() for w in re.split(r"[,\s]+", s.get(key, "")) if w.strip())

        try:
            return cls(
                address=address,
                password=password(),
                name=s.get("name", "Clawden"),
                username=s.get("username", ""),
                imap_host=host,
                imap_port=int(s.get("imap_port", 993 if imap_security == "tls" else 143)),
                imap_security=imap_security,
                smtp_host=s.get("smtp_host", host),
                smtp_port=int(s.get("smtp_port", {"tls": 465, "starttls": 587}.get(smtp_security, 25))),
                smtp_security=smtp_security,
                mailbox=s.get("mailbox", "INBOX"),
                idle=s.get("idle", "true").lower() in ("1", "true", "yes"),
                ca_file=s.get("ca_file", ""),
                poll_interval=float(s.get("poll_interval", 60)),
                idle_renew=float(s.get("idle_renew", 300)),
                allow=words("allow"),
                trusted_servers=words("trusted_servers") or (host.lower(),),
                require_authentication=s.get("require_authentication", "false").lower() in ("1", "true", "yes"),
                max_file_bytes=int(float(s.get("max_file_mb", 10)) * 1024 * 1024),
            )
        except ValueError as exc:
            raise BridgeConfigError(f"[channels.email]: {exc}") from exc

    def tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return context

    def allowed(self, sender: str) -> bool:
        return not self.allow or sender in self.allow or f"@{core.domain(sender)}" in self.allow


# --- the platform clients -------------------------------------------------------------------------------


class ImapError(Exception):
    pass


class LoginRefused(BridgeConfigError):
    """The server refused the login: `clawden doctor` reads the code as "the credential is wrong"."""

    code = 401


def login_failure(what: str, said: str) -> Exception:
    """A server's "no" to the bridge's login: held back (a connection limit) or down for now, which are waited out,
    else the credentials refused (`LoginRefused`), which only the owner can mend."""
    text = f"{what} refused: {said}"
    if _HELD_BACK.search(said):
        return PlatformError(text, "rate_limited")
    if _DOWN_FOR_NOW.search(said):
        return PlatformError(text, "transient")
    return LoginRefused(text)


def login_trouble(platform: str, exc: LoginRefused | PlatformError) -> Trouble:
    """A refused login in a person's words (`call_trouble`): the credentials, with the owner's fix, or held back."""
    if isinstance(exc, LoginRefused):
        exc = PlatformError(str(exc), "transient", code=LoginRefused.code)
    return call_trouble(platform, exc, MAIL_FIX)


async def imap_connect(s: MailSettings) -> aioimaplib.IMAP4:
    if s.imap_security == "tls":
        client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
            host=s.imap_host, port=s.imap_port, timeout=s.timeout, ssl_context=s.tls()
        )
    else:
        client = aioimaplib.IMAP4(host=s.imap_host, port=s.imap_port, timeout=s.timeout)
    try:
        await client.wait_hello_from_server()
        response = await client.login(s.login, s.password)
        if response.result != "OK":
            raise login_failure(f"IMAP login as {s.login}", _said(response))
    except BaseException:
        await imap_close(client)
        raise
    return client


async def imap_close(client: aioimaplib.IMAP4) -> None:
    """Log out, or at least close the connection (a dead or refused one has nothing to log out of)."""
    try:
        await asyncio.wait_for(client.logout(), 5)
    except Exception as exc:
        log.debug("IMAP logout: %r", exc)
    transport = getattr(client.protocol, "transport", None) if client.protocol is not None else None
    if transport is not None and not transport.is_closing():
        transport.close()


def _said(response: aioimaplib.Response) -> str:
    return b" ".join(x for x in response.lines if isinstance(x, bytes)).decode(errors="replace")[:300]


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        raise ImapError(f"IMAP {what}: {response.result} {_said(response)}")
    return response


def smtp_client(s: MailSettings) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=s.smtp_host,
        port=s.smtp_port,
        username=s.login,
        password=s.password,
        use_tls=s.smtp_security == "tls",
        start_tls=s.smtp_security == "starttls",
        tls_context=s.tls() if s.smtp_security != "none" else None,
        timeout=s.timeout,
    )


async def smtp_check(s: MailSettings) -> None:
    """Log in to the SMTP server as a submission does (TLS as configured, EHLO, STARTTLS, AUTH), then QUIT having sent
    nothing. Within `s.timeout` in all, the bound of any one exchange: a server that does not answer holds up the
    bridge's start (and `clawden doctor`) no longer than one silent IMAP exchange would."""
    smtp = smtp_client(s)
    deadline = asyncio.timeout(s.timeout)
    try:
        async with deadline:
            await smtp.connect()
    except BaseException as exc:
        smtp.close()
        if isinstance(exc, TimeoutError) and deadline.expired():  # said in the client's terms, as its own timeouts are
            raise aiosmtplib.SMTPTimeoutError(f"no answer within {s.timeout:g}s") from exc
        raise
    try:
        await asyncio.wait_for(smtp.quit(), 5)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):  # it took the login: a lost goodbye changes nothing
        smtp.close()


def smtp_failure(exc: Exception, *, submitting: bool) -> PlatformError:
    """What a failed submission means. The server's answer decides where there is one: 4xx is temporary, 5xx
    permanent. A connection that broke while connecting or logging in certainly sent nothing; one that broke
    while the mail was being submitted (`submitting`) may have delivered it. A certificate the bridge cannot trust
    sent nothing either, and is waited out as an outage is: the owner can mend it (`untrusted_trouble`)."""
    cert = untrusted(exc)
    if cert is not None:
        return PlatformError(
            f"the mail server's certificate is not trusted ({_verify_message(cert)})", "transient", connection=True
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        words = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        kind: Kind = "transient" if codes and all(400 <= c < 500 for c in codes) else "permanent"
        return PlatformError(f"the mail server refused the recipient ({words})", kind, code=max(codes or [0]))
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        kind = "transient" if 400 <= exc.code < 500 else "permanent"
        return PlatformError(f"the mail server answered {exc.code} {exc.message}", kind, code=exc.code)
    broken = isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError | OSError | TimeoutError)
    if broken and submitting:
        return PlatformError(
            f"the connection to the mail server broke mid-submission: {exc!r}", "unknown", connection=True
        )
    if broken or isinstance(exc, aiosmtplib.SMTPConnectError):
        return PlatformError(f"cannot reach the mail server: {exc}", "transient", connection=True)
    return PlatformError(f"the mail server cannot take mail from this bridge as configured: {exc}", "permanent")


def untrusted(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed a connection, if that is what did: STARTTLS raises it as it is, implicit TLS
    under the client's SMTPConnectError."""
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        if isinstance(at, ssl.SSLCertVerificationError):
            return at
        seen.add(id(at))
        at = at.__cause__ or at.__context__
    return None


def untrusted_trouble(platform: str, where: str, cert: ssl.SSLCertVerificationError) -> Trouble:
    """An SMTP server's certificate the bridge cannot trust, in a person's words, with the owner's fix: a name the
    certificate does not hold, or a CA the bridge does not know (a server's own, an expired or broken chain)."""
    if cert.verify_code in _NAME_MISMATCH:
        fix = "set [channels.email] smtp_host to a name it holds and restart the bridge"
    else:
        fix = "set [channels.email] ca_file to its CA and restart the bridge"
    return Trouble(
        f"{where}: {_verify_message(cert)}",
        problem=f"{platform}'s certificate is not trusted",
        outcome=f"replies wait until it is: {fix}, or fix the server's certificate",
    )


def _verify_message(cert: ssl.SSLCertVerificationError) -> str:
    return (cert.verify_message or str(cert)).rstrip(".")


def smtp_refusal(login: str, exc: aiosmtplib.SMTPAuthenticationError) -> PlatformError:
    """A submission's login the server refused: for now (4xx, tried again), or the password (5xx). That fails the
    mail at once instead of trying again: each try would be one more refused login, and a server's fail2ban bans an
    address after a few. The service's trouble says it with the fix."""
    text = f"SMTP login as {login} refused: {exc.code} {exc.message}"
    if 400 <= exc.code < 500:
        return PlatformError(text, "transient", code=exc.code)
    return PlatformError(text, "permanent", code=LoginRefused.code)


# --- the bridge -----------------------------------------------------------------------------------------


class EmailBridge(Bridge):
    name = CHANNEL
    platform = "the mail server"

    def __init__(self, settings: MailSettings, store_path: Path) -> None:
        self.s = settings
        self.store_path = store_path
        self._store: MailStore | None = None
        self.capabilities = Capabilities(
            max_text=200_000,
            files=True,
            cards=True,  # cards: numbered choices, answered by a reply
            max_file_bytes=settings.max_file_bytes,
            max_download_bytes=settings.max_file_bytes,
        )
        # IDLE is renewed every idle_renew seconds, and each renewal is a sign of life.
        self.deaf_after = max(120.0, settings.idle_renew * 2 + settings.timeout * 2, settings.poll_interval * 3)
        self._send_lock = asyncio.Lock()
        self._inbound: Inbound | None = None
        # The SMTP trouble met by the start's check or a submission (the login refused, or a certificate the bridge
        # cannot trust), said as the service's trouble until an SMTP login is taken: till then the IMAP listener's
        # signs of life do not end it (they say nothing of SMTP). While one is held, the listener's `_recheck_smtp`
        # tries the login again every `smtp_retry` seconds after the last SMTP connection.
        self._smtp_trouble: Trouble | None = None
        self._smtp_held = asyncio.Event()
        self._smtp_tried = 0.0  # monotonic time of the last SMTP connection (a check's or a submission's)
        self.smtp_retry = REFUSED_RETRY

    @property
    def store(self) -> MailStore:
        assert self._store is not None, "start() opens the store"
        return self._store

    async def start(self) -> PlatformError | None:
        self._store = await MailStore.open(self.store_path)
        await self.store.prune()
        try:
            await imap_close(await imap_connect(self.s))
        except BridgeConfigError:
            raise
        except PlatformError as exc:  # a login the server declines for now: the listener says so in its terms
            log.warning("IMAP server %s:%d declines the login for now: %s", self.s.imap_host, self.s.imap_port, exc)
            return exc
        except Exception as exc:  # the server is down or away: the listener keeps trying, and the service says why
            log.warning("IMAP server %s:%d not reachable yet: %r", self.s.imap_host, self.s.imap_port, exc)
            away = PlatformError(f"cannot reach the IMAP server: {exc!r}", "transient", connection=True)
            away.__cause__ = exc  # the operating system's reason, for `why_unreachable`
            return away
        return await self._check_smtp()

    def start_trouble(self, away: PlatformError) -> Trouble:
        """The start's SMTP trouble (a refused login, an untrusted certificate) in a submission's words; anything
        else as any bridge says it."""
        return self._smtp_trouble or super().start_trouble(away)

    async def _check_smtp(self) -> PlatformError | None:
        """The SMTP login tried at start (`smtp_check`), so a refused one is said before any reply needs it, and
        again while a trouble is held (`_recheck_smtp`). A refusal, or a certificate the bridge cannot trust, is held
        as a submission's is (`_smtp_connect_failed`) and returned; a login taken ends an earlier trouble (it proves
        the password and the certificate); a server away is returned in its words."""
        where = f"SMTP server {self.s.smtp_host}:{self.s.smtp_port}"
        self._smtp_tried = time.monotonic()
        try:
            await smtp_check(self.s)
        except aiosmtplib.SMTPAuthenticationError as exc:
            refused = smtp_refusal(self.s.login, exc)
            log.error("%s: %s", where, refused)
            self._smtp_login(refused)
            return refused
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            failure = self._smtp_connect_failed(exc)
            if untrusted(exc) is not None:
                log.error("%s: %s", where, failure)
                return failure
            log.warning("%s not reachable yet: %r", where, exc)
            failure.__cause__ = exc  # the operating system's reason, for `why_unreachable`
            # No cause on what is returned: the service's `why_unreachable` says its description as it is.
            return PlatformError(f"its {where}: {why_unreachable(failure)}", "transient")
        self._smtp_login(None)
        return None

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    # --- in -------------------------------------------------------------------------------------------

    async def listen(self, inbound: Inbound) -> None:
        self._inbound = inbound
        recheck = asyncio.create_task(self._recheck_smtp(), name=f"{CHANNEL}-smtp-recheck")
        try:
            await self._read_mailbox(inbound)
        finally:
            recheck.cancel()
            await asyncio.gather(recheck, return_exceptions=True)

    async def _read_mailbox(self, inbound: Inbound) -> None:
        client = await self._log_in(inbound)
        try:
            selected = _ok(await client.select(self.s.mailbox), f"SELECT {self.s.mailbox}")
            validity = next(
                (
                    m.group(1)
                    for line in selected.lines
                    if isinstance(line, bytes)
                    if (m := _UIDVALIDITY.search(line.decode(errors="replace")))
                ),
                "",
            )
            last = await self._cursor(inbound, validity)
            idle = self.s.idle and client.has_capability("IDLE")
            log.info(
                "reading %s as %s from UID %d (UIDVALIDITY %s; %s)",
                self.s.mailbox,
                self.s.login,
                last,
                validity,
                "IDLE" if idle else f"polling every {self.s.poll_interval:g}s",
            )
            while True:
                last = await self._catch_up(client, inbound, validity, last)
                await self._alive(inbound)
                if idle:
                    await self._idle(client)
                else:
                    await inbound.pause(self.s.poll_interval)  # no push: polling is all there is
                    _ok(await client.noop(), "NOOP")
        finally:
            await imap_close(client)

    async def _log_in(self, inbound: Inbound) -> aioimaplib.IMAP4:
        """The IMAP login, tried until the server takes it. A refusal is said in the server's terms at once: the
        password refused (tried again only every REFUSED_RETRY), or held back; a server away ends the listener, which
        the service restarts and says cannot reach it."""
        failures = 0
        while True:
            try:
                return await imap_connect(self.s)
            except (LoginRefused, PlatformError) as exc:
                failures += 1
                refused = isinstance(exc, LoginRefused)
                delay = REFUSED_RETRY if refused else backoff(failures, cap=300.0)
                log.error("%s; trying again in %.0fs", exc, delay)
                inbound.reach.failed(login_trouble(inbound.reach.platform, exc))
                await inbound.pause(delay)

    async def _alive(self, inbound: Inbound) -> None:
        """The IMAP server was heard. It ends the listener's own trouble, but not an SMTP one, which is said again in
        its place: only an SMTP login taken (a submission's, or `_recheck_smtp`'s) says that is mended."""
        if self._smtp_trouble is None:
            inbound.alive()
            return
        await inbound.wait(0)  # a sign of life
        if inbound.reach.trouble != self._smtp_trouble:
            inbound.reach.failed(self._smtp_trouble)

    async def _recheck_smtp(self) -> None:
        """While an SMTP trouble is held, the login tried again (`smtp_check`, sending nothing) `smtp_retry` seconds
        after the last SMTP connection, so a trouble the owner mends on the server ends with no reply to send: a pace,
        as slow as the refused IMAP login's, since each refused try counts towards a fail2ban ban. With no trouble
        held it waits and connects to nothing."""
        while True:
            await self._smtp_held.wait()
            left = self._smtp_tried + self.smtp_retry - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)  # the pace: a submission meanwhile moves it on, or ends the trouble
                continue
            async with self._send_lock:  # not alongside a submission: one SMTP connection at a time
                if self._smtp_trouble is not None:
                    log.info("trying the SMTP login again (%s)", self._smtp_trouble.why)
                    try:
                        await self._check_smtp()  # it sets `_smtp_tried` first: a failure below keeps the pace
                    except Exception:  # a bug must not end the re-checks for the listener's life
                        log.exception("the SMTP login could not be tried again")

    def _smtp_connect_failed(self, exc: Exception) -> PlatformError:
        """A failed SMTP connection, classified (`smtp_failure`); a certificate the bridge cannot trust is held as the
        service's trouble, as a refused login is, while the reply waits."""
        cert = untrusted(exc)
        if cert is not None:
            where = f"SMTP server {self.s.smtp_host}:{self.s.smtp_port}"
            self._hold_smtp(untrusted_trouble(self.platform, where, cert))
        return smtp_failure(exc, submitting=False)

    def _smtp_login(self, refused: PlatformError | None) -> None:
        """An SMTP login (a submission's or a check's): refused holds its trouble, taken ends any trouble held."""
        self._hold_smtp(login_trouble(self.platform, refused) if refused is not None else None)

    def _hold_smtp(self, trouble: Trouble | None) -> None:
        """The SMTP trouble held, said as the service's trouble; None ends what was held, unless the service now says
        the listener's own. Before the listener starts it is only held: `listen` says it."""
        held = self._smtp_trouble
        self._smtp_trouble = trouble
        if trouble is not None:
            self._smtp_held.set()
        else:
            self._smtp_held.clear()
        if self._inbound is None:
            return
        if trouble is not None:
            self._inbound.reach.failed(trouble)
        elif held is not None and self._inbound.reach.trouble == held:
            self._inbound.reach.reached()

    async def _cursor(self, inbound: Inbound, validity: str) -> int:
        """The last UID handled, valid only under the UIDVALIDITY it was taken with."""
        stored = await inbound.state.cursor(f"{self.s.mailbox}.uidvalidity")
        uid = await inbound.state.cursor(f"{self.s.mailbox}.uid")
        if stored is None:
            await inbound.state.set_cursor(f"{self.s.mailbox}.uidvalidity", validity)
            return 0
        if stored[0] != validity:
            # The server renumbered the mailbox: read it again from the start; mail already handled is
            # known by its Message-ID and skipped.
            log.warning(
                "%s was renumbered (UIDVALIDITY %s, was %s): reading it again, skipping mail already handled",
                self.s.mailbox,
                validity,
                stored[0],
            )
            await inbound.state.set_cursor(f"{self.s.mailbox}.uid", "0")
            await inbound.state.set_cursor(f"{self.s.mailbox}.uidvalidity", validity)
            return 0
        return int(uid[0]) if uid else 0

    async def _idle(self, client: aioimaplib.IMAP4) -> None:
        waiting = await client.idle_start(timeout=self.s.idle_renew + self.s.timeout)
        try:
            # Whatever the server pushes (EXISTS, EXPUNGE, FETCH), a search for new UIDs follows.
            await client.wait_server_push(timeout=self.s.idle_renew)
        except TimeoutError:
            pass
        finally:
            if client.has_pending_idle():
                client.idle_done()
            await asyncio.wait_for(waiting, self.s.timeout)

    async def _catch_up(self, client: aioimaplib.IMAP4, inbound: Inbound, validity: str, last: int) -> int:
        """Reads every mail past UID `last`, until the server has told of none it has not read.

        The server tells of a mail that lands during a command by an untagged EXISTS at that command's end,
        and aioimaplib keeps such a line only for a NOOP then pending: one that comes with a SEARCH, FETCH or
        STORE is dropped, and IDLE would not tell of that mail again. So each search goes out with a NOOP
        behind it (asyncio starts the two in order), and reading goes on until a search finds nothing and its
        NOOP heard of nothing: a mail told of during a FETCH or STORE is found by the next search, one told of
        during the last search by the NOOP's EXISTS.
        """
        while True:
            found, heard = await asyncio.gather(client.uid_search(f"UID {last + 1}:*"), client.noop())
            last, read = await self._read(client, inbound, validity, last, _ok(found, "UID SEARCH"))
            if not read and not any(isinstance(line, bytes) and line.endswith(b"EXISTS") for line in heard.lines):
                return last

    async def _read(
        self, client: aioimaplib.IMAP4, inbound: Inbound, validity: str, last: int, found: aioimaplib.Response
    ) -> tuple[int, int]:
        """Each mail a search found past `last`, in UID order: the new `last`, and how many there were."""
        uids = sorted(
            int(u)
            for line in found.lines
            if isinstance(line, bytes)
            for u in line.split()
            if u.isdigit() and int(u) > last
        )
        for uid in uids:
            fetched = _ok(await client.uid("fetch", str(uid), "(BODY.PEEK[])"), f"UID FETCH {uid}")
            raw = next((bytes(x) for x in fetched.lines if isinstance(x, bytearray)), None)
            if raw is not None:
                await self._received(raw, f"{validity}.{uid}", inbound)
                await client.uid("store", str(uid), "+FLAGS.SILENT (\\Seen)")
            await inbound.state.set_cursor(f"{self.s.mailbox}.uid", str(uid))
            last = uid
            await self._alive(inbound)
        return last, len(uids)

    async def _received(self, raw: bytes, fallback_id: str, inbound: Inbound) -> None:
        """One mail: its thread noted, then published (or refused with its reason); idempotent."""
        message = core.parse(raw)
        msgid = (core.message_ids(core.header(message, "Message-ID")) or [f"<{fallback_id}@imap.invalid>"])[0]
        key = f"{CHANNEL}:{core.bare(msgid)}"
        if await self.store.handled(key):
            return
        sender = core.address(core.header(message, "Reply-To") or core.header(message, "From"))
        author = core.address(core.header(message, "From"))
        chat_id = await self._thread_of(message, msgid, author)
        others = [
            a
            for a in core.addresses([core.header(message, "To"), core.header(message, "Cc")])
            if a != self.s.address and a != sender
        ]
        prior = await self.store.thread(chat_id)
        refs = (*(prior.references if prior else core.message_ids(core.header(message, "References"))), msgid)
        thread = core.Thread(
            chat_id,
            prior.subject if prior else core.header(message, "Subject"),
            tuple(dict.fromkeys([sender, *others])) if sender else (prior.to if prior else ()),
            tuple(dict.fromkeys(refs)),
        )
        refused = core.automatic(message, own=self.s.address)
        if not refused:
            verdict = core.authenticity(message, self.s.trusted_servers)
            if verdict.checked and not verdict.aligned:
                refused = f"unverified sender: {verdict.reason}"
            elif not verdict.checked and self.s.require_authentication:
                refused = f"unverified sender: {verdict.reason} (require_authentication is on)"
            elif not self.s.allowed(author):
                refused = f"{author} is not among the allowed senders ([channels.email] allow)"
        if not refused:  # only mail that may be answered keeps the thread's people and ids
            await self.store.save(thread, msgid)
        text = core.fresh_text(message)
        route = ev.Route(channel=CHANNEL, chat_id=chat_id)
        who = ev.Sender(id=author, name=_display_name(core.header(message, "From")))
        parent = core.message_ids(core.header(message, "In-Reply-To"))
        number = core.choice(text)
        card = await self.store.card(parent) if number is not None and not refused else None
        if card is not None and number is not None and 1 <= number <= card[1]:
            # A card mailed to an address (an approver's) is answered from that person's own mailbox: what the
            # approvals service says back to whoever answered goes to them, not to the card's addressee.
            where = ev.Route(channel=CHANNEL, chat_id=author) if "@" in chat_id and author else route
            known = await inbound.click(
                where,
                f"{card[0]}:{number - 1}",
                action_id=core.bare(msgid),
                sender=who,
                message_id=core.bare(parent[0]),
            )
            log.info("%s answered card %s with choice %d%s", author, card[0], number, "" if known else " (expired)")
        else:
            attachments = () if refused else await self._save_files(message, chat_id, core.bare(msgid), inbound)
            subject = core.header(message, "Subject")
            body = text if not subject or prior is not None else f"{subject}\n\n{text}".strip()
            await inbound.publish(
                ev.InboundMessage(
                    route=route,
                    message_id=core.bare(msgid),
                    sender=who,
                    text=body,
                    sent_at=time.time(),
                    chat_name=subject[:100],
                    is_group=bool(others),
                    attachments=attachments,
                    mentioned=self._addressed(message, text, bool(others)),
                    reply_to=core.bare(parent[0]) if parent else None,
                    refused=refused,
                )
            )
            if refused:
                log.info("mail %s from %s goes to no agent: %s", msgid, author, refused)
        await self.store.mark_handled(key)

    def _addressed(self, message: EmailMessage, text: str, group: bool) -> bool:
        """A mail among several people is for the assistant when it is in To (Cc is listening in), or when the
        text names it; a mail between the sender and the assistant alone always is."""
        if not group or self.s.address in core.addresses([core.header(message, "To")]):
            return True
        return bool(self.s.name) and re.search(rf"\b{re.escape(self.s.name)}\b", text, re.IGNORECASE) is not None

    async def _thread_of(self, message: EmailMessage, msgid: str, sender: str) -> str:
        ids = [
            *core.message_ids(core.header(message, "In-Reply-To")),
            *reversed(core.message_ids(core.header(message, "References"))),
        ]
        known = await self.store.chat_of_ids(ids)
        if known is not None:
            return known
        root = core.thread_root(message)
        if root is None:  # no thread headers: a client that keeps none may still answer a thread we know
            by_subject = await self.store.chat_by_subject(core.header(message, "Subject"), sender)
            if by_subject is not None:
                return by_subject
        return core.chat_of(root or msgid)

    async def _save_files(
        self, message: EmailMessage, chat_id: str, msgid: str, inbound: Inbound
    ) -> tuple[ev.Attachment, ...]:
        out = []
        limit = self.capabilities.max_download_bytes
        for n, file in enumerate(core.files(message)):
            attachment = ev.Attachment(name=file.name, mime=file.mime, size=len(file.data))
            if len(file.data) > limit:
                log.info(
                    "not keeping %s (%d bytes) of %s: over the %d-byte limit", file.name, len(file.data), msgid, limit
                )
                out.append(attachment)
                continue
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", file.name)[-100:] or "file"
            dest = inbound.files_dir / chat_id / f"{re.sub(r'[^A-Za-z0-9]', '', msgid)[:40]}-{n}-{safe}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(dest.write_bytes, file.data)
            out.append(ev.Attachment(name=file.name, mime=file.mime, size=len(file.data), url=dest.as_uri()))
        return tuple(out)

    # --- out ------------------------------------------------------------------------------------------

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        choices = [b for row in buttons for b in row]
        if choices:
            text = (
                text.rstrip()
                + "\n\n"
                + "\n".join(f"{i}) {b.label}" for i, b in enumerate(choices, 1))
                + "\n\nReply with the number of your choice."
            )
        msgid = await self._send(route, text, [], key, parent=f"<{reply_to}>" if reply_to else None)
        if choices:
            token = choices[0].data.partition(":")[0]
            await self.store.remember_card(msgid, token, len(choices))
        return core.bare(msgid)

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        data = await asyncio.to_thread(path.read_bytes)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return core.bare(await self._send(route, f"Attached: {path.name}", [core.File(path.name, mime, data)], key))

    async def _send(
        self, route: ev.Route, text: str, files: list[core.File], key: str, parent: str | None = None
    ) -> str:
        thread = await self._thread_for(route, text)
        mail = core.compose(
            own=self.s.address, name=self.s.name, thread=thread, text=text, key=key, attachments=files, parent=parent
        )
        msgid = str(mail["Message-ID"])
        async with self._send_lock:  # one submission at a time: a home server's SMTP limits are small
            smtp = smtp_client(self.s)
            self._smtp_tried = time.monotonic()
            try:
                await smtp.connect()  # with STARTTLS and the login, as configured
            except aiosmtplib.SMTPAuthenticationError as exc:
                refused = smtp_refusal(self.s.login, exc)
                self._smtp_login(refused)
                raise refused from exc
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise self._smtp_connect_failed(exc) from exc
            self._smtp_login(None)
            try:
                await smtp.send_message(mail)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise smtp_failure(exc, submitting=True) from exc
            finally:
                try:
                    await smtp.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    smtp.close()
        await self.store.save(
            core.Thread(thread.chat_id, thread.subject, thread.to, (*thread.references, msgid)), msgid
        )
        return msgid

    async def _thread_for(self, route: ev.Route, text: str) -> core.Thread:
        if "@" in route.chat_id:
            # A chat named by an address (an approver's cards): a thread of its own, started with this mail.
            to = core.address(route.chat_id)
            first = next((line.strip() for line in text.split("\n") if line.strip()), "")
            subject = first if len(first) <= 70 else first[:67] + "..."
            return core.Thread(route.chat_id, subject or f"A message from {self.s.name}", (to,), ())
        thread = await self.store.thread(route.chat_id)
        if thread is None or not thread.to:
            raise PlatformError(f"no mail thread {route.chat_id} is known to this bridge", "permanent")
        return thread


def _display_name(value: str) -> str:
    return parseaddr(value)[0]


# --- the process ----------------------------------------------------------------------------------------


async def check_token(cfg: Config, environ: dict[str, str] | None = None) -> str:
    """For `clawden doctor`: log in to IMAP and to SMTP with the settings the bridge would use."""
    s = MailSettings.load(cfg, environ)
    client = await imap_connect(s)
    try:
        folder = _ok(await client.select(s.mailbox), f"SELECT {s.mailbox}")
        count = next(
            (line.split()[0].decode() for line in folder.lines if isinstance(line, bytes) and line.endswith(b"EXISTS")),
            "?",
        )
    finally:
        await imap_close(client)
    try:
        await smtp_check(s)
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise LoginRefused(f"SMTP login as {s.login} refused: {exc.code} {exc.message}") from exc
    return (
        f"{s.address}: IMAP {s.imap_host}:{s.imap_port} ({s.mailbox}, {count} mails) and SMTP "
        f"{s.smtp_host}:{s.smtp_port} ({s.smtp_security}) logins accepted"
    )


async def login(server: str, user: str, password: str) -> MailSettings:
    """`clawden channels login email --server HOST --user ADDRESS`: both logins checked, on the usual ports
    (IMAP over TLS on 993, submission with STARTTLS on 587) unless `CLAWDEN_EMAIL_<KEY>` says otherwise."""
    prefix = "CLAWDEN_EMAIL_"
    given = {
        k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix) and k != prefix + "TOKEN"
    }
    s = MailSettings.of(given | {"address": user, "imap_host": server}, lambda: password)
    await imap_close(await imap_connect(s))
    try:
        await smtp_check(s)
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise LoginRefused(f"SMTP login as {s.login} refused: {exc.code} {exc.message}") from exc
    return s


def store_login(cfg: Config, server: str, s: MailSettings) -> list[str]:
    """Write keys/email (mode 0600 from the start) and, if config.toml has no [channels.email], the address and
    the server; returns what was done, for a person."""
    cfg.keys_dir.mkdir(parents=True, exist_ok=True)
    key = cfg.keys_dir / CHANNEL
    partial = key.with_name(key.name + ".new")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(s.password + "\n")
    partial.replace(key)
    done = [
        f"IMAP and SMTP logins as {s.login} accepted; stored the password in {key} (mode 0600): the mail "
        "server asks for it at every login"
    ]
    file = cfg.path("config.toml")
    if not channel_settings(cfg, CHANNEL, {}):
        lines = [f"address = {json.dumps(s.address)}", f"imap_host = {json.dumps(server)}"]
        more = (
            ("imap_port", s.imap_port),
            ("imap_security", s.imap_security),
            ("smtp_host", s.smtp_host if s.smtp_host != server else ""),
            ("smtp_port", s.smtp_port),
            ("smtp_security", s.smtp_security),
            ("ca_file", s.ca_file),
        )
        lines += [f"{k} = {json.dumps(v)}" for k, v in more if v and str(v) != str(getattr(MailSettings, k, ""))]
        with file.open("a") as out:
            out.write("\n[channels.email]\n" + "".join(line + "\n" for line in lines))  # TOML basic strings
        done.append(f"wrote [channels.email] ({s.address} on {server}) to {file}")
    else:
        done.append(f"{file} already has [channels.email]; left as it is")
    return done


async def main(ctx: ServiceContext) -> None:
    settings = MailSettings.load(ctx.config, None)
    deadline = float(channel_settings(ctx.config, CHANNEL).get("send_deadline", 600))
    bridge = EmailBridge(settings, ctx.config.data_dir / "channels" / "email-threads.db")
    await serve(ctx, bridge, policy=RetryPolicy(deadline=deadline))
