"""The email bridge as it runs (`clawden run channel@email`), with real NATS and a real Postfix + Dovecot: mail in
as events in its thread, answers out in the thread, files both ways, cards answered by number, automatic and
forged mail refused with a reason, nothing lost or repeated across a restart, SMTP failures retried or reported."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from clawden.bus import events as ev
from services.channels.bridge import BridgeStats, Inbound
from services.channels.mail.bridge import EmailBridge, MailSettings
from services.channels.state import BridgeState
from tests.channels.email_harness import TRUSTED, EmailBridgeProcess, EmailBus, letter, mails, text_of, unique
from tests.conftest import NatsServer
from tests.eventually import eventually
from tests.servers.mail.fixture import MailServer


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[EmailBus]:
    b = await EmailBus.open(nats_server.url)
    yield b
    await b.close()


@pytest.fixture
def bot() -> str:
    return unique("assistant")


@pytest.fixture
def bridge_process(
    tmp_path: Path, nats_server: NatsServer, mail_server: MailServer, bot: str
) -> Iterator[EmailBridgeProcess]:
    b = EmailBridgeProcess(tmp_path / "home", nats_server.url, mail_server, bot, max_file_mb="0.01")
    yield b
    b.close()
    assert mail_server.password not in b.output(), "the password reached the log"


@pytest.fixture
async def bridge(bridge_process: EmailBridgeProcess) -> EmailBridgeProcess:
    return await bridge_process.start()


def messages(events: list[object]) -> list[ev.InboundMessage]:
    return [e for e in events if isinstance(e, ev.InboundMessage)]


async def test_a_mail_and_its_reply_arrive_as_one_chat_and_the_answer_keeps_the_thread(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    ada = unique("ada")
    first = letter(ada, bot, "Shall we have dinner on Sunday?", subject="Sunday")
    mail_server.send(first)
    [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    assert got.sender.id == ada and got.mentioned and not got.is_group and not got.refused
    assert "Shall we have dinner on Sunday?" in got.text and got.chat_name == "Sunday"
    assert got.message_id == str(first["Message-ID"]).strip("<>")

    await bus.send(got.route.chat_id, "Sunday at 8 works.\n\nSee you then.", id="out-1")
    [answer] = await mails(mail_server, ada, 1)
    assert answer["Subject"] == "Re: Sunday" and answer["In-Reply-To"] == first["Message-ID"]
    assert str(first["Message-ID"]) in str(answer["References"]) and answer["Auto-Submitted"] == "auto-replied"
    assert text_of(answer) == "Sunday at 8 works.\n\nSee you then."  # nothing quoted
    html = answer.get_body(preferencelist=("html",))
    assert html is not None and "<p>See you then.</p>" in str(html.get_content())
    [receipt] = await bus.wait(bus.receipts, lambda r: r.outbound_id == "out-1")
    assert receipt.ok and receipt.platform_message_id == str(answer["Message-ID"]).strip("<>")

    mail_server.send(
        letter(ada, bot, "Great, I'll bring wine.\n\nOn Sunday, you wrote:\n> Sunday at 8 works.", reply_to=answer)
    )
    got_both = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage), count=2)
    second = got_both[1]
    assert second.route.chat_id == got.route.chat_id and second.text == "Great, I'll bring wine."


async def test_a_mail_among_several_people_is_for_the_assistant_when_it_is_in_to_or_named(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    ada, bob = unique("ada"), unique("bob")
    mail_server.send(letter(ada, bot, "to you, bob listening", subject="a", Cc=bob))
    mail_server.send(letter(ada, bob, "to bob, you listening", subject="b", Cc=bot))
    mail_server.send(letter(ada, bob, "what does clawden think?", subject="c", Cc=bot))
    mail_server.send(letter(ada, bot, "just us", subject="d"))
    got = {m.chat_name: m for m in messages(await bus.wait(bus.inbound, lambda e: True, count=4))}
    assert {k: (m.is_group, m.mentioned) for k, m in got.items()} == {
        "a": (True, True),
        "b": (True, False),
        "c": (True, True),
        "d": (False, True),
    }

    await bus.send(got["a"].route.chat_id, "to you both", id="out-group")
    [answer] = await mails(mail_server, bob, 1, where=lambda m: m["Subject"] == "Re: a")
    assert {a.strip() for a in str(answer["To"]).split(",")} == {ada, bob}  # everyone in the thread


async def test_files_come_in_within_the_limit_and_go_out_as_attachments(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str, tmp_path: Path
) -> None:
    ada = unique("ada")
    small, large = b"menu: soup, bread\n", bytes(range(256)) * 64  # the limit here is 0.01 MB
    mail_server.send(
        letter(
            ada,
            bot,
            "Two files",
            files=(("menu.txt", "text/plain", small), ("photo.bin", "application/octet-stream", large)),
        )
    )
    [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    menu, photo = got.attachments
    assert (menu.name, menu.mime, menu.size) == ("menu.txt", "text/plain", len(small))
    assert await asyncio.to_thread(Path(url2pathname(urlsplit(menu.url).path)).read_bytes) == small
    assert photo.name == "photo.bin" and photo.size == len(large) and photo.url == ""  # over the limit: not kept

    sessions = bridge.home / "sessions" / "main" / "s1" / "outbox"  # the bridge sends only from session folders
    sessions.mkdir(parents=True)
    (sessions / "plan.txt").write_bytes(b"dinner at 8")
    await bus.send(got.route.chat_id, "", id="out-file", files=(str(sessions / "plan.txt"),))
    [answer] = await mails(mail_server, ada, 1)
    [attachment] = list(answer.iter_attachments())
    assert attachment.get_filename() == "plan.txt" and attachment.get_payload(decode=True) == b"dinner at 8"
    assert answer["In-Reply-To"] is not None


async def test_a_card_goes_out_numbered_and_a_reply_with_a_number_presses_its_button(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    ada = unique("ada")
    await bus.send(
        ada,
        "The agent wants to use GitHub.",
        id="approval:mail-1",
        card=ev.Card(
            title="Allow?", buttons=(ev.Button(id="approve", label="Approve"), ev.Button(id="deny", label="Deny"))
        ),
    )
    [card] = await mails(mail_server, ada, 1)
    assert "1) Approve\n2) Deny" in text_of(card) and card["Subject"] == "The agent wants to use GitHub."
    mail_server.send(letter(ada, bot, "2\n\nOn Saturday you wrote:\n> 1) Approve", reply_to=card))
    [action] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundAction))
    assert (action.card_id, action.button_id, action.sender.id) == ("approval:mail-1", "deny", ada)
    assert messages(await bus.inbound()) == []  # a pressed button is not also a message


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto_Submitted": "auto-replied", "Subject": "Out of office"}, "Auto-Submitted: auto-replied"),
        ({"Precedence": "bulk"}, "Precedence: bulk"),
        ({"List_Id": "<family.lists.localhost>"}, "mailing-list mail"),
        (
            {"Authentication_Results": "mx.clawden.test; dkim=pass header.d=evil.example; spf=fail smtp.mailfrom=x"},
            "unverified sender: From domain localhost has no aligned DKIM or SPF pass",
        ),
    ],
)
async def test_automatic_and_forged_mail_is_refused_with_its_reason(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str, headers: dict[str, str], reason: str
) -> None:
    ada = unique("ada")
    subject = headers.pop("Subject", "Hello")
    mail_server.send(letter(ada, bot, "Automatic words", subject=subject, **cast("dict[str, Any]", headers)))
    [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    assert reason in got.refused and got.attachments == ()


async def test_a_bounce_is_refused_and_never_answered(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    bounce = letter("MAILER-DAEMON@localhost", bot, "Delivery failed", subject="Undelivered Mail Returned to Sender")
    mail_server.send(bounce)
    [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    assert "bounce" in got.refused
    await bus.send(got.route.chat_id, "an answer nobody should get", id="out-bounce")
    [receipt] = await bus.wait(bus.receipts, lambda r: r.outbound_id == "out-bounce")
    assert not receipt.ok and "no mail thread" in (receipt.error or "")


async def test_mail_that_arrives_while_the_bridge_is_down_is_read_once_after_it_comes_back(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    ada = unique("ada")
    mail_server.send(letter(ada, bot, "before", subject="m0"))
    await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    bridge.stop(signal.SIGKILL)
    for i in range(1, 6):
        mail_server.send(letter(ada, bot, f"while away {i}", subject=f"m{i}"))
    await mails(mail_server, bot, 6)  # all delivered to the mailbox before the bridge is back
    await bridge.start()
    got = messages(await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage), count=6))
    assert sorted(m.chat_name for m in got) == [f"m{i}" for i in range(6)]
    # The stream dedupes by key anyway; the bridge itself must not even try twice (its UID mark held).
    assert bridge.output().count("reading INBOX") == 2 and "from UID 1 " in bridge.output()


async def test_a_temporary_smtp_refusal_is_retried_until_the_mail_goes(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    ada = unique("ada")
    mail_server.send(letter(ada, bot, "Anything new?"))
    [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    mail_server.refuse({f"^{ada}$": "450 4.2.0 Mailbox busy, try later"})
    try:
        await bus.send(got.route.chat_id, "Nothing new.", id="out-4xx")
        await eventually(
            lambda: "450" in bridge.output() and "next in" in bridge.output(),
            30,
            lambda: f"no retry of the 4xx in the log:\n{bridge.output()[-2000:]}",
        )
    finally:
        mail_server.refuse({})
    [answer] = await mails(mail_server, ada, 1, timeout=60, context=bridge.output)
    assert text_of(answer) == "Nothing new."
    [receipt] = await bus.wait(bus.receipts, lambda r: r.outbound_id == "out-4xx" and r.final, timeout=60)
    assert receipt.ok


async def test_a_permanent_smtp_refusal_is_reported_with_the_servers_words(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    ada = unique("gone")
    mail_server.send(letter(ada, bot, "Reply to me"))
    [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    mail_server.refuse({f"^{ada}$": "550 5.1.1 No such user here"})
    try:
        await bus.send(got.route.chat_id, "Here you go.", id="out-5xx")
        [receipt] = await bus.wait(bus.receipts, lambda r: r.outbound_id == "out-5xx")
    finally:
        mail_server.refuse({})
    error = receipt.error or ""
    assert not receipt.ok and receipt.final and "550 5.1.1" in error and "No such user here" in error
    assert mail_server.inbox(ada.partition("@")[0]) == []


@pytest.mark.parametrize("smtp", ["starttls", "tls"])
async def test_imap_over_tls_and_smtp_with_starttls_or_implicit_tls_carry_mail_both_ways(
    tmp_path: Path, nats_server: NatsServer, mail_server: MailServer, bus: EmailBus, smtp: str
) -> None:
    bot, ada = unique("assistant"), unique("ada")
    bridge = EmailBridgeProcess(
        tmp_path / "home",
        nats_server.url,
        mail_server,
        bot,
        imap_security="tls",
        imap_port=str(mail_server.imaps_port),
        smtp_security=smtp,
        ca_file=str(mail_server.ca_file),
        smtp_port=str(mail_server.smtp_port if smtp == "starttls" else mail_server.smtps_port),
    )
    try:
        await bridge.start()
        mail_server.send(letter(ada, bot, "over TLS?"))
        [got] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
        await bus.send(got.route.chat_id, "over TLS.", id=f"out-{smtp}")
        [answer] = await mails(mail_server, ada, 1, context=bridge.output)
        assert text_of(answer) == "over TLS."
    finally:
        bridge.close()


async def test_a_certificate_the_bridge_does_not_trust_is_refused(
    tmp_path: Path, nats_server: NatsServer, mail_server: MailServer
) -> None:
    bridge = EmailBridgeProcess(
        tmp_path / "home",
        nats_server.url,
        mail_server,
        unique("assistant"),
        imap_security="tls",
        imap_port=str(mail_server.imaps_port),
    )
    try:
        await bridge.start()  # it runs, and keeps trying: the server may get a good certificate
        await eventually(
            lambda: "CERTIFICATE_VERIFY_FAILED" in bridge.output(),
            30,
            lambda: f"no certificate failure in the log:\n{bridge.output()[-2000:]}",
        )
        assert "reading INBOX" not in bridge.output()
    finally:
        bridge.close()


async def test_without_idle_the_bridge_polls_and_still_reads_each_mail_once(
    tmp_path: Path, nats_server: NatsServer, mail_server: MailServer, bus: EmailBus
) -> None:
    bot, ada = unique("assistant"), unique("ada")
    bridge = EmailBridgeProcess(tmp_path / "home", nats_server.url, mail_server, bot, idle="false", poll_interval="0.5")
    try:
        await bridge.start()
        await eventually(lambda: "polling every" in bridge.output(), 10, "the bridge did not say it polls")
        for i in range(3):
            mail_server.send(letter(ada, bot, f"polled {i}", subject=f"p{i}"))
        got = messages(await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage), count=3))
        assert sorted(m.chat_name for m in got) == ["p0", "p1", "p2"]
    finally:
        bridge.close()


async def test_fifty_mails_in_and_fifty_answers_out_across_a_kill_each_go_once(
    mail_server: MailServer, bus: EmailBus, bridge: EmailBridgeProcess, bot: str
) -> None:
    ada = unique("ada")
    opening = letter(ada, bot, "start", subject="Fifty")
    mail_server.send(opening)
    [first] = await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage))
    chat = first.route.chat_id
    for i in range(50):
        await bus.send(chat, f"answer {i}", id=f"fifty-{i}")
    for i in range(50):
        mail_server.send(letter(ada, bot, f"mail {i}", reply_to=opening))
        if i == 25:
            await mails(mail_server, ada, 5, where=lambda m: text_of(m).startswith("answer "))
            bridge.stop(signal.SIGKILL)  # answers half out, mail half read, more of both on the way
    await bridge.start()

    got = messages(await bus.wait(bus.inbound, lambda e: isinstance(e, ev.InboundMessage), count=51, timeout=60))
    assert sorted(m.text for m in got if m.text.startswith("mail ")) == sorted(f"mail {i}" for i in range(50))
    assert {m.route.chat_id for m in got} == {chat}
    receipts = await bus.wait(
        bus.receipts, lambda r: r.outbound_id.startswith("fifty-") and r.final, count=50, timeout=60
    )
    unconfirmed = {r.outbound_id for r in receipts if r.unconfirmed}
    assert len(unconfirmed) <= 1 and all(r.ok for r in receipts if not r.unconfirmed)
    answers = [text_of(m) for m in mail_server.inbox(ada.partition("@")[0])]
    assert len(answers) == len(set(answers)), "an answer went out twice"
    missing = {f"fifty-{i}" for i in range(50) if f"answer {i}" not in answers}
    assert missing <= unconfirmed  # only the one in flight at the kill may be lost, and it says so


class _Recording(Inbound):
    """The listener's Inbound with every event kept in a list (what would go to JetStream); `during_first`
    runs inside the first publish, while the listener is between its commands."""

    def __init__(self, state: BridgeState, files_dir: Path, during_first: Callable[[], Awaitable[None]]) -> None:
        super().__init__(cast(Any, None), "email", state, files_dir, BridgeStats())
        self.events: list[ev.Inbound] = []
        self.during_first = during_first

    async def publish(self, event: ev.Inbound) -> None:
        if not self.events:
            await self.during_first()
        self.events.append(event)


async def test_a_mail_that_lands_while_the_bridge_reads_another_is_read_without_waiting_for_idle_to_renew(
    mail_server: MailServer, tmp_path: Path
) -> None:
    """Dovecot tells of a new mail (an untagged EXISTS) at the end of whatever command runs when it lands,
    here the bridge's FETCH or STORE of the mail before; aioimaplib drops an EXISTS that comes with such a
    command. The bridge must still read the second mail now, not at IDLE's renewal (300 s)."""
    bot, ada = unique("assistant"), unique("ada")
    settings = MailSettings.of(
        {
            "address": bot,
            "imap_host": mail_server.host,
            "imap_port": str(mail_server.imap_port),
            "imap_security": "none",
            "trusted_servers": TRUSTED,
        },
        lambda: mail_server.password,
    )
    bridge = EmailBridge(settings, tmp_path / "mail.db")
    await bridge.start()
    state = await BridgeState.open(tmp_path / "state.db")

    async def second_lands() -> None:
        mail_server.send(letter(ada, bot, "and another thing", subject="second"))
        await mails(mail_server, bot, 2)  # in the mailbox: the listener's next command is told of it

    mail_server.send(letter(ada, bot, "first thing", subject="first"))
    await mails(mail_server, bot, 1)
    inbound = _Recording(state, tmp_path / "files", second_lands)
    listening = asyncio.create_task(bridge.listen(inbound))
    try:
        await eventually(lambda: len(messages(list(inbound.events))) == 2, 30, lambda: f"read: {inbound.events}")
        assert [m.chat_name for m in messages(list(inbound.events))] == ["first", "second"]
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await bridge.close()
        await state.close()
