"""What the email bridge says is wrong (its ping's `trouble`, which `clawden status` shows as degraded) when the mail
server refuses it, in the server's terms: the IMAP or SMTP login refused, with the owner's fix; held back by a
connection limit; unreachable otherwise. The words as a table; the bridge's start, which tries both logins, against
the real Postfix + Dovecot; then the bridge process, whose password the server stops taking under it."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiosmtplib
import pytest

from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from clawden.cli import status
from clawden.natsserver import free_port
from services.channels.mail import bridge as mail
from services.channels.reach import line
from services.channels.retry import PlatformError
from tests.channels.email_harness import EmailBridgeProcess, EmailBus, letter, mails, text_of, unique
from tests.channels.harness import listening
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.servers.mail.fixture import MailServer

PLATFORM = "the mail server"
AT = time.mktime((2026, 12, 6, 21, 14, 0, 0, 0, -1))  # the lines' "since": 21:14 local time
REFUSED = "nothing comes in or goes out until they are mended: " + mail.MAIL_FIX


def said(exc: Exception) -> str:
    assert isinstance(exc, mail.LoginRefused | PlatformError)
    return line(PLATFORM, mail.login_trouble(PLATFORM, exc), AT, AT)


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (
            "[AUTHENTICATIONFAILED] Authentication failed.",
            "the mail server refuses the bridge's credentials since 21:14 (IMAP login as a@b refused: "
            f"[AUTHENTICATIONFAILED] Authentication failed.); {REFUSED}",
        ),
        (
            "Maximum number of connections from user+IP exceeded (mail_max_userip_connections=10)",
            "the mail server is holding the bridge back since 21:14 (it asks the bridge to wait); messages wait and "
            "go through once it answers",
        ),
        (
            "[UNAVAILABLE] Temporary authentication failure",
            "cannot reach the mail server since 21:14 (it answers IMAP login as a@b refused: [UNAVAILABLE] Temporary "
            "authentication failure); messages wait and go through once it answers",
        ),
    ],
)
def test_an_imap_login_the_server_declines_is_said_in_its_terms(answer: str, text: str) -> None:
    assert said(mail.login_failure("IMAP login as a@b", answer)) == text


def test_only_a_refusal_of_the_credentials_stops_the_bridge_at_start() -> None:
    assert isinstance(mail.login_failure("IMAP login as a@b", "[AUTHENTICATIONFAILED] no"), mail.LoginRefused)
    assert not isinstance(mail.login_failure("IMAP login as a@b", "[LIMIT] Too many"), mail.LoginRefused)


def test_an_smtp_login_refused_fails_the_mail_at_once_and_one_refused_for_now_is_tried_again() -> None:
    password = mail.smtp_refusal("a@b", aiosmtplib.SMTPAuthenticationError(535, "5.7.8 authentication failed"))
    assert (password.kind, said(password)) == (
        "permanent",
        "the mail server refuses the bridge's credentials since 21:14 (SMTP login as a@b refused: 535 5.7.8 "
        f"authentication failed); {REFUSED}",
    )
    later = mail.smtp_refusal("a@b", aiosmtplib.SMTPAuthenticationError(454, "4.7.0 Temporary authentication failure"))
    assert later.kind == "transient" and said(later).startswith("cannot reach the mail server since 21:14 (it answers")


# --- the server's side of a test: what Dovecot (and Postfix's SASL, which asks it) takes -----------------------------

DOVECOT = "/srv/dovecot/dovecot.conf"
REFUSES_SMTP = "/srv/dovecot/refuses-smtp"


def _dovecot_takes(server: MailServer, change: str, *, smtp: bool, imap: bool, user: str) -> None:
    """Run `change` (a shell line editing Dovecot's config), reload both servers, and wait until Dovecot answers
    `user`'s logins as `smtp` and `imap` say: a reload returns before the new auth process answers (no event)."""
    container = server.container.get_wrapped_container()
    # Postfix too: its smtpd processes keep their connection to the auth process the reload retires.
    result = container.exec_run(
        ["sh", "-c", f"{change} && doveadm -c {DOVECOT} reload && postfix -c /srv/postfix/etc reload"]
    )
    assert result.exit_code == 0, result.output

    def takes(service: str) -> bool:
        check = ["doveadm", "-c", DOVECOT, "auth", "test", "-x", f"service={service}", user, server.password]
        return container.exec_run(check).exit_code == 0

    deadline = time.monotonic() + 15
    while (takes("smtp"), takes("imap")) != (smtp, imap):
        assert time.monotonic() < deadline, f"Dovecot did not come to take SMTP {smtp}, IMAP {imap} for {user}"
        time.sleep(0.1)


@contextmanager
def smtp_refuses(server: MailServer, user: str) -> Iterator[None]:
    """Postfix refuses `user`'s SMTP login (535, RFC 4954's "authentication credentials invalid") while Dovecot's
    IMAP takes the same password, until the block ends: a passdb that denies the user for the smtp service alone
    (the lookup key names the service: Postfix asks Dovecot with service=smtp)."""
    container = server.container.get_wrapped_container()
    conf = container.exec_run(["cat", DOVECOT]).output.decode()
    deny = f"passdb {{\n  driver = passwd-file\n  args = username_format=%s-%u {REFUSES_SMTP}\n  deny = yes\n}}\n"
    changed = base64.b64encode(conf.replace("passdb {", deny + "passdb {", 1).encode()).decode()
    kept = base64.b64encode(conf.encode()).decode()
    write = f"echo 'smtp-{user}:x' > {REFUSES_SMTP} && echo '{changed}' | base64 -d > {DOVECOT}"
    _dovecot_takes(server, write, smtp=False, imap=True, user=user)
    try:
        yield
    finally:
        _dovecot_takes(server, f"echo '{kept}' | base64 -d > {DOVECOT}", smtp=True, imap=True, user=user)


# --- the bridge's start: both logins tried before it says it is ready ------------------------------------------------


def mailbox(server: MailServer, address: str, **settings: str) -> mail.MailSettings:
    given = {
        "address": address,
        "imap_host": server.host,
        "imap_port": str(server.imap_port),
        "imap_security": "none",
        "smtp_port": str(server.smtp_port),
        "smtp_security": "none",
    }
    return mail.MailSettings.of(given | settings, lambda: server.password)


@asynccontextmanager
async def started(s: mail.MailSettings, home: Path) -> AsyncIterator[tuple[mail.EmailBridge, str]]:
    """The bridge started, and what its service says at once: the line a failed start becomes ("" when none)."""
    bridge = mail.EmailBridge(s, home / "threads.db")
    away = await bridge.start()
    try:
        yield bridge, "" if away is None else line(PLATFORM, bridge.start_trouble(away), AT, AT)
    finally:
        await bridge.close()


async def test_a_start_whose_smtp_login_is_taken_says_nothing(mail_server: MailServer, tmp_path: Path) -> None:
    async with started(mailbox(mail_server, unique("ok")), tmp_path) as (_, said_at_start):
        assert said_at_start == ""


async def test_a_start_says_an_smtp_login_the_server_refuses(mail_server: MailServer, tmp_path: Path) -> None:
    address = unique("smtp-refused")
    with smtp_refuses(mail_server, address):
        async with started(mailbox(mail_server, address), tmp_path) as (_, said_at_start):
            pass
    assert f"(SMTP login as {address} refused: 535 " in said_at_start, said_at_start


async def test_a_start_says_it_cannot_reach_an_smtp_server_that_is_away(
    mail_server: MailServer, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    async with started(mailbox(mail_server, unique("away"), smtp_port=str(port)), tmp_path) as (_, said_at_start):
        assert said_at_start == (
            f"cannot reach the mail server since 21:14 (its SMTP server 127.0.0.1:{port}: connection refused); "
            "messages wait and go through once it answers"
        )


UNTRUSTED = "the mail server's certificate is not trusted since 21:14"
CA_FIX = (
    "replies wait until it is: set [channels.email] ca_file to its CA and restart the bridge, or fix the server's "
    "certificate"
)
NAME_FIX = (
    "replies wait until it is: set [channels.email] smtp_host to a name it holds and restart the bridge, or fix the "
    "server's certificate"
)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_start_says_an_smtp_certificate_it_cannot_trust_with_the_fix(
    mail_server: MailServer, tmp_path: Path, security: str
) -> None:
    port = mail_server.smtp_port if security == "starttls" else mail_server.smtps_port
    tls = {"smtp_security": security, "smtp_port": str(port)}
    async with started(mailbox(mail_server, unique("tls"), **tls), tmp_path) as (_, said_at_start):  # its own CA
        assert said_at_start == f"{UNTRUSTED} (SMTP server 127.0.0.1:{port}: self-signed certificate); {CA_FIX}"
    trusted = mailbox(mail_server, unique("tls"), **tls, ca_file=str(mail_server.ca_file))
    async with started(trusted, tmp_path) as (_, said_at_start):
        assert said_at_start == ""


async def test_a_start_says_an_smtp_certificate_for_another_name_with_the_fix(
    mail_server: MailServer, tmp_path: Path
) -> None:
    # 127.1 is 127.0.0.1 to the resolver, but a name to TLS: one the certificate (127.0.0.1, localhost) does not hold.
    s = mailbox(
        mail_server, unique("tls"), smtp_host="127.1", smtp_security="starttls", ca_file=str(mail_server.ca_file)
    )
    async with started(s, tmp_path) as (_, said_at_start):
        assert said_at_start == (
            f"{UNTRUSTED} (SMTP server 127.1:{mail_server.smtp_port}: Hostname mismatch, certificate is not valid for "
            f"'127.1'); {NAME_FIX}"
        )


async def test_an_smtp_login_taken_at_start_ends_a_refusal_held_from_before(
    mail_server: MailServer, nats_server: NatsServer, tmp_path: Path
) -> None:
    address = unique("mended")
    bridge = mail.EmailBridge(mailbox(mail_server, address), tmp_path / "threads.db")
    with smtp_refuses(mail_server, address):
        assert await bridge.start() is not None
    await bridge.close()
    assert await bridge.start() is None  # the same bridge, started again with the server taking the login
    bus = await EmailBus.open(nats_server.url)
    try:
        async with listening(bridge, bus.js, tmp_path) as (inbound, _):
            mail_server.send(letter(unique("ada"), address, "Heard?"))
            await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage) and e.text.endswith("Heard?"))
            assert not inbound.reach.failing, inbound.reach.trouble
    finally:
        await bus.close()


# --- the bridge against the real Postfix + Dovecot -------------------------------------------------------------------


@contextmanager
def password_changed(server: MailServer, *, kick: str = "") -> Iterator[None]:
    """Dovecot, and Postfix's SASL (which asks Dovecot), take another password until the block ends; `kick`: that
    user's IMAP connections are cut, so they log in again."""
    container = server.container.get_wrapped_container()
    conf = "/srv/dovecot/dovecot.conf"

    def take(password: str) -> None:
        swap = f"sed -i 's/^  args = password=.*/  args = password={password}/' {conf}"
        # Postfix too: its smtpd processes keep their connection to the auth process the reload retires.
        reload = f"doveadm -c {conf} reload && postfix -c /srv/postfix/etc reload"
        result = container.exec_run(["sh", "-c", f"{swap} && {reload}"])
        assert result.exit_code == 0, result.output
        # A reload returns before the new auth process answers: asked until it takes the new password (no event).
        deadline = time.monotonic() + 15
        check = ["doveadm", "-c", conf, "auth", "test", "anyone@localhost", password]
        while container.exec_run(check).exit_code != 0:
            assert time.monotonic() < deadline, "Dovecot did not take the new password"
            time.sleep(0.1)

    take("another-" + server.password)
    try:
        if kick:
            cut(server, kick)
        yield
    finally:
        take(server.password)


def landed(server: MailServer, user: str, text: str) -> bool:
    """Whether a mail with `text` is in the user's INBOX. Postfix is asked to try its deferred mail first: one it
    could not hand to Dovecot while the reloads restarted its LMTP would wait minutes for its next try."""
    server.container.get_wrapped_container().exec_run(["postqueue", "-c", "/srv/postfix/etc", "-f"])
    return any(text in text_of(m) for m in server.inbox(user))


def cut(server: MailServer, user: str) -> None:
    """The user's IMAP connections cut by Dovecot: the bridge's listener logs in again. None to cut (68, "No users
    kicked") is a listener between two connections, which logs in again anyway."""
    result = server.container.get_wrapped_container().exec_run(
        ["doveadm", "-c", "/srv/dovecot/dovecot.conf", "kick", user]
    )
    assert result.exit_code in (0, 68), result.output


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[EmailBus]:
    b = await EmailBus.open(nats_server.url)
    yield b
    await b.close()


@pytest.fixture
async def bridge(tmp_path: Path, nats_server: NatsServer, mail_server: MailServer) -> AsyncIterator[EmailBridgeProcess]:
    b = EmailBridgeProcess(tmp_path / "home", nats_server.url, mail_server, unique("assistant"))
    await b.start()
    await eventually(lambda: "reading INBOX" in b.output(), 30, b.output)
    yield b
    b.close()


async def trouble(bus: EmailBus) -> str:
    return (await status.ask(bus.nc, PING.at("channel-email"), Nothing())).trouble


async def test_a_password_the_imap_server_stops_taking_is_said_refused_with_the_fix(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess
) -> None:
    assert await trouble(bus) == ""
    with password_changed(mail_server, kick=bridge.address):

        async def refused() -> str | None:
            now = await trouble(bus)
            return now if now.startswith("the mail server refuses the bridge's credentials since ") else None

        now = await eventually(refused, 120, bridge.output)  # the cut IDLE ends within its 30 s timeout
    assert f"(IMAP login as {bridge.address} refused: " in now and now.endswith(REFUSED), now


async def test_a_password_smtp_refuses_is_said_until_a_submission_logs_in_and_mail_coming_in_does_not_end_it(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess
) -> None:
    ada = unique("ada")
    mail_server.send(letter(ada, bridge.address, "Anything new?"))
    [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    with password_changed(mail_server):
        await bus.send(got.route.chat_id, "Refused.", id="out-refused")
        [receipt] = await bus.wait(bus.receipts, lambda r: r.outbound_id == "out-refused" and r.final, timeout=60)
        now = await trouble(bus)
    assert not receipt.ok and "SMTP login" in (receipt.error or "") and "535" in (receipt.error or ""), bridge.output()
    assert now.startswith("the mail server refuses the bridge's credentials since ") and now.endswith(REFUSED), now
    assert f"(SMTP login as {bridge.address} refused: 535" in now

    # The listener logs in again (its connection cut, the password given back): once it hears the server again (a
    # mail comes in), its own trouble is over and the SMTP login's is said again, never ended. Whether Dovecot's
    # reloads cut the IMAP connection, and when, is its own affair (a busy machine differs): the cut here is certain.
    mail_server.send(letter(ada, bridge.address, "Still there?"))
    await eventually(lambda: asyncio.to_thread(landed, mail_server, bridge.address, "Still there?"), 120)
    cut(mail_server, bridge.address)
    await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage) and "Still there?" in e.text, timeout=120)

    async def smtp_said() -> str | None:
        again = await trouble(bus)
        return again if again.partition(" since ")[0] == now.partition(" since ")[0] else None

    assert f"(SMTP login as {bridge.address} refused: 535" in await eventually(smtp_said, 30, bridge.output)

    await bus.send(got.route.chat_id, "Taken.", id="out-taken")
    [answer] = await mails(mail_server, ada, 1, timeout=60, context=bridge.output)
    assert text_of(answer) == "Taken."
    assert await trouble(bus) == ""


async def test_a_bridge_whose_smtp_login_is_refused_starts_degraded_saying_so(
    tmp_path: Path, nats_server: NatsServer, mail_server: MailServer, bus: EmailBus
) -> None:
    """Degraded from its READY on, in a refused submission's exact words (`Bridge.start_trouble`)."""
    address = unique("assistant")
    b = EmailBridgeProcess(tmp_path / "home", nats_server.url, mail_server, address)
    try:
        with smtp_refuses(mail_server, address):
            await b.start()
            at_ready = await trouble(bus)
    finally:
        b.close()
    assert at_ready.startswith("the mail server refuses the bridge's credentials since "), at_ready
    assert f"(SMTP login as {address} refused: 535 " in at_ready and at_ready.endswith(REFUSED), at_ready


async def test_a_bridge_whose_logins_are_taken_starts_healthy(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess
) -> None:
    assert await trouble(bus) == ""
