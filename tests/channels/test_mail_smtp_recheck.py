"""An SMTP trouble the email bridge holds (the login refused, a certificate it cannot trust) ends once the owner
mends it, with no reply to send: the bridge tries the login again at its slow pace while one is held, and never
while none is. A certificate it cannot trust, met by a reply, is said with the fix while the reply waits, and the
reply goes out once when the certificate is trusted. Against the real Postfix + Dovecot."""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import certifi
import pytest

from clawden.bus import events as ev
from clawden.natsserver import free_port
from services.channels.mail import bridge as mail
from tests.channels.email_harness import EmailBridgeProcess, EmailBus, letter, mails, text_of, unique, user
from tests.channels.harness import listening
from tests.channels.test_email_trouble import mailbox, smtp_refuses, trouble
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.servers.mail.fixture import MailServer

PACE = 0.5  # the bridge's smtp_retry in these tests: REFUSED_RETRY (10 minutes) would outlast them
AGAIN = "trying the SMTP login again"
UNTRUSTED = "the mail server's certificate is not trusted"


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[EmailBus]:
    b = await EmailBus.open(nats_server.url)
    yield b
    await b.close()


def other_ca(path: Path) -> str:
    """A CA file that does not hold the test server's CA (the public ones): its certificate is not trusted."""
    shutil.copyfile(certifi.where(), path)
    return str(path)


def tries(caplog: pytest.LogCaptureFixture) -> int:
    return sum(AGAIN in r.getMessage() for r in caplog.records)


async def test_a_refused_smtp_login_is_tried_again_at_its_pace_and_ends_once_the_server_takes_it(
    mail_server: MailServer, bus: EmailBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawden.channels.email")
    address = unique("healed")
    bridge = mail.EmailBridge(mailbox(mail_server, address), tmp_path / "threads.db")
    bridge.smtp_retry = PACE
    with ExitStack() as refusing:
        refusing.enter_context(smtp_refuses(mail_server, address))
        assert await bridge.start() is not None
        async with listening(bridge, bus.js, tmp_path) as (inbound, _):
            # Refused again (a second try has begun once the first is over): still said, in the server's words.
            await eventually(lambda: tries(caplog) >= 2, 30, lambda: caplog.text)
            assert inbound.reach.trouble.problem == "the mail server refuses the bridge's credentials"
            assert f"SMTP login as {address} refused: 535 " in inbound.reach.trouble.why

            refusing.close()  # the server takes the login again (the owner mended it there); nobody sends a reply
            await eventually(lambda: not inbound.reach.failing, 30, lambda: f"{inbound.reach.trouble}\n{caplog.text}")


async def test_no_smtp_login_is_tried_again_while_none_is_refused(
    mail_server: MailServer, bus: EmailBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clawden.channels.email")
    address = unique("healthy")
    bridge = mail.EmailBridge(mailbox(mail_server, address), tmp_path / "threads.db")
    bridge.smtp_retry = 0.0
    assert await bridge.start() is None
    async with listening(bridge, bus.js, tmp_path) as (inbound, _):
        mail_server.send(letter(unique("ada"), address, "Quiet?"))
        await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage) and e.text.endswith("Quiet?"))
        assert not inbound.reach.failing
    assert tries(caplog) == 0, caplog.text


async def test_an_untrusted_certificate_held_from_the_start_ends_once_a_check_verifies_it(
    mail_server: MailServer, bus: EmailBus, tmp_path: Path
) -> None:
    ca_file = other_ca(tmp_path / "ca.pem")
    s = mailbox(mail_server, unique("cert"), smtp_security="starttls", ca_file=ca_file)
    bridge = mail.EmailBridge(s, tmp_path / "threads.db")
    bridge.smtp_retry = PACE
    assert await bridge.start() is not None
    async with listening(bridge, bus.js, tmp_path) as (inbound, _):
        # The IMAP listener's signs of life do not end it: it is said again in their place.
        await eventually(lambda: inbound.reach.trouble.problem == UNTRUSTED, 30, lambda: str(inbound.reach.trouble))
        assert inbound.reach.trouble.why == f"SMTP server 127.0.0.1:{mail_server.smtp_port}: self-signed certificate"

        shutil.copyfile(mail_server.ca_file, ca_file)  # the owner gives the server's CA where ca_file says
        await eventually(lambda: not inbound.reach.failing, 30, lambda: str(inbound.reach.trouble))


async def test_a_reply_met_by_an_untrusted_certificate_waits_saying_why_and_goes_out_once_it_is_trusted(
    tmp_path: Path, nats_server: NatsServer, mail_server: MailServer, bus: EmailBus
) -> None:
    ca_file = tmp_path / "ca.pem"
    shutil.copyfile(mail_server.ca_file, ca_file)  # trusted at start: the start's check says nothing
    b = EmailBridgeProcess(
        tmp_path / "home",
        nats_server.url,
        mail_server,
        unique("assistant"),
        smtp_security="starttls",
        ca_file=str(ca_file),
    )
    await b.start()
    try:
        await eventually(lambda: "reading INBOX" in b.output(), 30, b.output)
        ada = unique("ada")
        mail_server.send(letter(ada, b.address, "Still on for Friday?"))
        [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
        assert await trouble(bus) == ""

        other_ca(ca_file)  # the server's certificate is no longer one the bridge trusts
        await bus.send(got.route.chat_id, "Yes, Friday.", id="out-friday")

        async def untrusted() -> str | None:
            now = await trouble(bus)
            return now if now.startswith(UNTRUSTED + " since ") else None

        now = await eventually(untrusted, 30, b.output)
        assert f"(SMTP server 127.0.0.1:{mail_server.smtp_port}: self-signed certificate); " in now, now
        assert "set [channels.email] ca_file to its CA and restart the bridge" in now, now
        assert not [r for r in await bus.receipts() if r.final], "the reply was settled instead of waiting"

        shutil.copyfile(mail_server.ca_file, ca_file)  # trusted again: the reply's next try goes out
        [receipt] = await bus.wait(bus.receipts, lambda r: r.outbound_id == "out-friday" and r.final, timeout=90)
        assert receipt.ok, receipt
        [answer] = await mails(mail_server, ada, 1, timeout=30, context=b.output)
        assert text_of(answer) == "Yes, Friday."
        assert len(mail_server.inbox(user(ada))) == 1  # once: the tries that met the certificate sent nothing
        assert await trouble(bus) == ""
    finally:
        b.close()


async def test_an_smtp_login_taken_ends_only_its_own_trouble_not_the_imap_listeners(
    mail_server: MailServer, bus: EmailBus, tmp_path: Path
) -> None:
    address = unique("both")
    bridge = mail.EmailBridge(mailbox(mail_server, address), tmp_path / "threads.db")
    with smtp_refuses(mail_server, address):
        assert await bridge.start() is not None
    bridge.s = replace(bridge.s, imap_port=free_port())  # the IMAP server is away from now on: nothing listens there
    async with listening(bridge, bus.js, tmp_path) as (inbound, stats):
        await eventually(lambda: stats.listener_errors >= 2, 30, lambda: str(inbound.reach.trouble))
        assert inbound.reach.trouble.why == "connection refused"

        approver = unique("ada")
        route = ev.Route(channel="email", chat_id=approver)  # a thread of its own, as an approver's cards have
        await bridge.send_text(route, "Approve?", reply_to=None, buttons=[], key="k")  # a submission logs in
        assert inbound.reach.failing and inbound.reach.trouble.why == "connection refused"
    [card] = await mails(mail_server, approver, 1)
    assert text_of(card) == "Approve?"
