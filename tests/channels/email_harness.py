"""The real email bridge process (`clawden run channel@email`) against the real Postfix + Dovecot, mail written
and read as a person's client would, and a bus client on the email channel's subjects."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from clawden.bus import connect, ensure_streams, publish, subjects
from clawden.bus import events as ev
from tests.channels.harness import ChannelProcess
from tests.eventually import eventually
from tests.servers.mail.fixture import MailServer

CHANNEL = "email"
TRUSTED = "mx.clawden.test"  # the authserv-id the bridge trusts: what "our" mail server writes


def unique(name: str) -> str:
    """A fresh `<name>…@localhost` mailbox: one mail server serves the whole session."""
    return f"{name}{secrets.token_hex(3)}@localhost"


def user(address: str) -> str:
    return address.partition("@")[0]


class EmailBridgeProcess(ChannelProcess):
    """The email bridge against the real Postfix + Dovecot, as the mailbox `address`; start() is awaited."""

    channel = CHANNEL

    def __init__(
        self,
        home: Path,
        nats_url: str,
        server: MailServer,
        address: str,
        *,
        env: dict[str, str] | None = None,
        **settings: str,
    ) -> None:
        self.server = server
        self.address = address
        self.extra_env = env or {}
        super().__init__(
            home,
            nats_url,
            **(
                {
                    "address": address,
                    "imap_host": server.host,
                    "imap_port": str(server.imap_port),
                    "imap_security": "none",
                    "smtp_host": server.host,
                    "smtp_port": str(server.smtp_port),
                    "smtp_security": "none",
                    "trusted_servers": TRUSTED,
                }
                | settings
            ),
        )

    def credentials(self) -> dict[str, str]:
        return {"CLAWDEN_EMAIL_TOKEN": self.server.password}

    def env(self) -> dict[str, str]:
        return super().env() | self.extra_env

    async def start(self) -> EmailBridgeProcess:  # type: ignore[override]  # awaited: the tests run in a loop
        self.spawn()
        await eventually(self.ready, 30, self.not_ready)
        return self


def letter(
    sender: str,
    to: str,
    text: str,
    *,
    subject: str = "Plans",
    reply_to: EmailMessage | None = None,
    files: tuple[tuple[str, str, bytes], ...] = (),
    **headers: str,
) -> EmailMessage:
    """A mail as a person's client writes it; `reply_to`: an answer to that mail (thread headers kept)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject if reply_to is None else f"Re: {reply_to['Subject']}".replace("Re: Re: ", "Re: ")
    message["Message-ID"] = make_msgid(domain=sender.partition("@")[2] or "localhost")
    if reply_to is not None:
        message["In-Reply-To"] = str(reply_to["Message-ID"])
        message["References"] = " ".join(
            filter(None, [str(reply_to.get("References") or ""), str(reply_to["Message-ID"])])
        )
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(text)
    for name, mime, data in files:
        maintype, _, subtype = mime.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message


async def mails(
    server: MailServer,
    address: str,
    count: int,
    timeout: float = 30,
    where: Callable[[EmailMessage], bool] = lambda m: True,
    context: Callable[[], str] = lambda: "",
) -> list[EmailMessage]:
    """The first `count` mails in `address`'s INBOX that match, once there are that many; `context` adds to
    the failure message (a bridge's log)."""

    async def enough() -> list[EmailMessage] | None:
        found = [m for m in await asyncio.to_thread(server.inbox, user(address)) if where(m)]
        return found if len(found) >= count else None

    def failure() -> str:
        subjects = [m["Subject"] for m in server.inbox(user(address))]
        return (
            f"fewer than {count} mails for {address}: {subjects}\n{context()[-3000:]}\n"
            f"mail server:\n{server.logs()[-3000:]}"
        )

    result: list[EmailMessage] = await eventually(enough, timeout, failure)
    return result


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    return "" if body is None else str(body.get_content()).replace("\r\n", "\n").strip()


class EmailBus:
    """The bus side of a test on the email channel: publishes outbound events, reads inbound and receipts."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()

    @classmethod
    async def open(cls, url: str, nc: Client | None = None) -> EmailBus:
        bus = cls(nc or await connect(url, "test-bus"))
        await ensure_streams(bus.js)
        return bus

    async def close(self) -> None:
        await self.nc.close()

    async def send(
        self, chat_id: str, text: str, *, id: str, card: ev.Card | None = None, files: tuple[str, ...] = ()
    ) -> ev.OutboundMessage:
        event = ev.OutboundMessage(
            id=id, route=ev.Route(channel=CHANNEL, chat_id=chat_id), text=text, card=card, files=files
        )
        await publish(self.js, subjects.outbound(CHANNEL, chat_id), event, msg_id=event.id)
        return event

    async def stored(self, subject: str, stream: str) -> list[Any]:
        info = await self.js.stream_info(stream)
        if not info.state.messages:
            return []
        sub = await self.js.pull_subscribe(
            subject, stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0)
        )
        out: list[Any] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:
                    break
                for m in msgs:
                    out.append(ev.decode(m.data))
                    await m.ack()
        finally:
            await sub.unsubscribe()
        return out

    async def inbound(self) -> list[Any]:
        return await self.stored(subjects.inbound(CHANNEL), "CLAWDEN_INBOUND")

    async def receipts(self) -> list[ev.DeliveryReceipt]:
        return await self.stored(subjects.receipt(CHANNEL), "CLAWDEN_RECEIPTS")

    async def wait(
        self,
        read: Callable[[], Awaitable[list[Any]]],
        where: Callable[[Any], bool],
        count: int = 1,
        timeout: float = 30,
    ) -> list[Any]:
        async def enough() -> list[Any] | None:
            found = [e for e in await read() if where(e)]
            return found if len(found) >= count else None

        result: list[Any] = await eventually(enough, timeout, f"fewer than {count} matching events arrived")
        return result
