"""The WhatsApp Cloud API bridge: deliveries come in through the webhook front door (JetStream, verified
there), messages go out through the Graph API with the bridge's own token.

In: text, replies (context), reactions, images, documents, audio and video (fetched with the token:
GET the media id for its URL, then GET the URL), reply-button and list replies (card clicks), and
status callbacks (delivered, read, failed) as delivery receipts. Out: text (4096 characters a message),
replies, reactions, files (uploaded, then sent by media id), cards as reply buttons (up to 3), a list
(up to 10 rows) or numbered text. WhatsApp lets a business write only within 24 hours of the person's
last message (the customer-service window); outside it only a template may go, so the bridge refuses
a free-form message with that reason and sends the configured template, if any, to invite a reply.
Settings: `[channels.whatsapp] phone_number_id`, `graph_url`, `template`, `template_language`; the
token in keys/whatsapp (0600). The doc pages cited are the WhatsApp Cloud API's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import re
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
from nats.errors import Error as NatsError

from clawden.backoff import backoff
from clawden.bridgeconfig import BridgeConfigError, channel_settings, read_secret
from clawden.bus import Retry, bind, consume, publish, sentlog, subjects, webhooks
from clawden.bus import events as ev
from clawden.bus.streams import bridge_webhooks
from clawden.config import Config
from clawden.runtime import ServiceContext, sleep_unless_stopping
from services.channels import service
from services.channels.bridge import Bridge, ButtonRef, Capabilities, Inbound
from services.channels.reach import Trouble, call_trouble
from services.channels.retry import PlatformError
from services.channels.state import SENDS_KEPT

log = logging.getLogger("clawden.channels.whatsapp")
CHANNEL = "whatsapp"
GRAPH_URL = "https://graph.facebook.com/v21.0"
MAX_TEXT = 4096  # "Messages: text object": body up to 4096 characters
MAX_BODY_WITH_BUTTONS = 1024  # "Interactive object": body.text up to 1024 characters
MAX_BUTTONS, MAX_BUTTON_TITLE = 3, 20  # "Reply buttons": up to 3, titles up to 20 characters
MAX_ROWS, MAX_ROW_TITLE = 10, 24  # "List messages": up to 10 rows, titles up to 24 characters
WINDOW = 24 * 3600.0  # "Customer service windows"
WINDOW_KEPT = 30 * 24 * 3600.0  # past it a refusal says "never" instead of "n days ago"
PRUNE_EVERY = 6 * 3600.0
REPORTED = ("delivered", "read", "failed")  # the statuses that become receipts; "sent" was said at send
PENDING_KEPT = 1000
UPLOAD_LIMIT = 100 * 1024 * 1024  # documents; images 5 MB, audio and video 16 MB ("Supported media types")
DOWNLOAD_LIMIT = 100 * 1024 * 1024
# Graph error codes ("Error codes" page): what trying again can fix.
RATE_CODES = {4, 80007, 130429, 131048, 131056}
PAIR_RATE_CODES = {131056}  # "Pair rate limit": too many messages to one person; the number itself is not held back
TRANSIENT_CODES = {1, 2, 131000, 131016, 133004}
WINDOW_CODES = {131047}  # "Re-engagement message": more than 24 hours since the person last wrote
TOKEN_CODES = {190}
# How the owner mends a token the Graph API refuses (the running bridge notices a new keys/whatsapp: `keywatch`).
WHATSAPP_FIX = (
    "put a valid access token in keys/whatsapp (Meta's app dashboard: a system user's token); the bridge notices "
    "and restarts with it; `clawden doctor` tries it"
)
WINDOW_REFUSAL = (
    "not sent: WhatsApp lets a business write only within 24 hours of the person's last message, "
    "and this person last wrote {ago}; only an approved template may be sent until they write again"
)


# --- the webhook's JSON ("Webhooks reference: messages"), decoded once ----------------------------------


class _S(msgspec.Struct, frozen=True, kw_only=True, rename={"from_": "from"}):
    pass


class Profile(_S, frozen=True):
    name: str = ""


class Contact(_S, frozen=True):
    wa_id: str
    profile: Profile = Profile()


class Context(_S, frozen=True):
    id: str = ""


class Text(_S, frozen=True):
    body: str


class Reaction(_S, frozen=True):
    message_id: str
    emoji: str = ""  # "" when the reaction was removed


class Media(_S, frozen=True):
    id: str
    mime_type: str = "application/octet-stream"
    caption: str = ""
    filename: str = ""


class Reply(_S, frozen=True):
    id: str
    title: str = ""


class Interactive(_S, frozen=True):
    type: str
    button_reply: Reply | None = None
    list_reply: Reply | None = None


class TemplateButton(_S, frozen=True):
    payload: str
    text: str = ""


class Message(_S, frozen=True):
    from_: str
    id: str
    timestamp: str
    type: str
    text: Text | None = None
    context: Context | None = None
    reaction: Reaction | None = None
    image: Media | None = None
    document: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    sticker: Media | None = None
    interactive: Interactive | None = None
    button: TemplateButton | None = None


class StatusError(_S, frozen=True):
    code: int = 0
    title: str = ""
    message: str = ""


class Status(_S, frozen=True):
    id: str
    status: str
    timestamp: str
    recipient_id: str = ""
    errors: tuple[StatusError, ...] = ()


class Value(_S, frozen=True):
    messaging_product: str = "whatsapp"
    contacts: tuple[Contact, ...] = ()
    messages: tuple[Message, ...] = ()
    statuses: tuple[Status, ...] = ()


class Change(_S, frozen=True):
    field: str
    value: Value


class Entry(_S, frozen=True):
    id: str
    changes: tuple[Change, ...] = ()


class Envelope(_S, frozen=True):
    object: str
    entry: tuple[Entry, ...] = ()


envelope_decoder = msgspec.json.Decoder(Envelope)
MEDIA_KINDS = ("image", "document", "audio", "video", "sticker")


class SentRecord(msgspec.Struct, frozen=True):
    """What a late status callback must name: kept per WhatsApp message id the bridge sent."""

    outbound_id: str
    session_id: str
    seq: int
    chat_id: str


_encoder = msgspec.json.Encoder()
_sent_decoder = msgspec.json.Decoder(SentRecord)
_status_decoder = msgspec.json.Decoder(Status)


# --- the pure parts ---------------------------------------------------------------------------------------


def graph_error(status: int, body: dict[str, Any], retry_after: str | None) -> PlatformError:
    """A Graph API error answer, classified ("Error codes": `error.code`, `error.message`, `error.error_data`)."""
    found = body.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    code = int(err.get("code") or 0)
    details = (err.get("error_data") or {}).get("details", "") if isinstance(err.get("error_data"), dict) else ""
    text = f"WhatsApp: {err.get('message') or f'HTTP {status}'}" + (f" ({details})" if details else "")
    after = float(retry_after) if retry_after and retry_after.isdigit() else None
    if status == 429 or code in RATE_CODES:
        return PlatformError(text, "rate_limited", code=code, retry_after=after)
    if status >= 500 or code in TRANSIENT_CODES:
        return PlatformError(text, "transient", code=code)
    if code in WINDOW_CODES:
        return PlatformError(
            text + ": outside the 24-hour customer-service window; only a template may be sent", "permanent", code=code
        )
    if code in TOKEN_CODES or status == 401:
        return PlatformError(
            text + ": the token in keys/whatsapp is invalid or expired", "permanent", code=code or status
        )
    return PlatformError(text, "permanent", code=code)


def graph_trouble(exc: PlatformError) -> Trouble | None:
    """What a failed Graph call says of the bridge's reach to WhatsApp, in its terms: the token refused (with the
    owner's fix), the number held back, or WhatsApp not reached; None where WhatsApp answered about this call alone
    (a bad request, a closed window, one person's pair rate limit): it was reached."""
    if exc.code in TOKEN_CODES or exc.code == 401:
        return call_trouble("WhatsApp", PlatformError(exc.description, exc.kind, code=401), WHATSAPP_FIX)
    if exc.connection or (exc.outage and exc.code not in PAIR_RATE_CODES):
        return call_trouble("WhatsApp", exc, WHATSAPP_FIX)
    return None


def interactive(text: str, buttons: list[ButtonRef]) -> dict[str, Any] | None:
    """A card's buttons as WhatsApp shows them: reply buttons (up to 3 short titles), else a list (up to 10
    rows), else None (the caller numbers them in the text)."""
    body = {"text": text[:MAX_BODY_WITH_BUTTONS] or "…"}
    if len(buttons) <= MAX_BUTTONS and all(len(b.label) <= MAX_BUTTON_TITLE for b in buttons):
        return {
            "type": "button",
            "body": body,
            "action": {"buttons": [{"type": "reply", "reply": {"id": b.data, "title": b.label}} for b in buttons]},
        }
    if len(buttons) <= MAX_ROWS:
        return {
            "type": "list",
            "body": body,
            "action": {
                "button": "Choose",
                "sections": [
                    {
                        "title": "Options",
                        "rows": [
                            {
                                "id": b.data,
                                "title": b.label[:MAX_ROW_TITLE],
                                **({"description": b.label[:72]} if len(b.label) > MAX_ROW_TITLE else {}),
                            }
                            for b in buttons
                        ],
                    }
                ],
            },
        }
    return None


def numbered(text: str, buttons: list[ButtonRef]) -> str:
    return text + "\n\n" + "\n".join(f"{i + 1}. {b.label}" for i, b in enumerate(buttons))


def _float(text: str) -> float:
    """A time kept as text; 0 (long ago) where it is not one."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def ago(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.0f} hours ago" if hours < 72 else f"{hours / 24:.0f} days ago"


def media_kind(mime: str) -> Literal["image", "audio", "video", "document"]:
    major = mime.split("/", 1)[0]
    if mime in ("image/jpeg", "image/png"):
        return "image"
    if major in ("audio", "video"):
        return "audio" if major == "audio" else "video"
    return "document"


# --- the bridge -----------------------------------------------------------------------------------------


class WhatsAppBridge(Bridge):
    name = CHANNEL
    platform = "WhatsApp"
    capabilities = Capabilities(
        max_text=MAX_TEXT,
        reactions=True,
        files=True,
        cards=True,
        max_file_bytes=UPLOAD_LIMIT,
        max_download_bytes=DOWNLOAD_LIMIT,
    )
    # The listener is a JetStream consumer: a quiet line is no sign of deafness (NATS keeps the pull alive).
    deaf_after = 365 * 24 * 3600.0

    def __init__(self, ctx: ServiceContext, token: str, settings: dict[str, str]) -> None:
        self.ctx = ctx
        self.token = token
        self.phone_number_id = settings.get("phone_number_id", "")
        self.graph_url = settings.get("graph_url", GRAPH_URL).rstrip("/")
        self.template = settings.get("template", "")
        self.template_language = settings.get("template_language", "en_US")
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=10.0), headers={"authorization": f"Bearer {token}"}
        )
        self._inbound: Inbound | None = None
        # What twins (instances on other hosts, sharing the webhook durable) must know of what this one heard, and
        # the other way round: each person's last message (the window), each sent message's record (statuses), and
        # the statuses that came before their message's record.
        self._shared = sentlog.SharedNotes(ctx.js, CHANNEL)
        self._pending: dict[str, ev.OutboundMessage] = {}  # outbound id -> message, while its parts go
        # Sends between the Graph call and noting its wamid: a status webhook may overtake the answer.
        self._in_flight: set[asyncio.Future[None]] = set()
        self._pruned = 0.0
        # The bridge's reach is its Graph calls (the webhooks come through the front door): the last call's outcome
        # sets the service's trouble or ends it (`_reached`), and while it is set a delivery does not end it.
        self._unreached = False

    # --- Graph calls ---

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            body = await self._graph(method, path, **kwargs)
        except PlatformError as exc:
            self._reached(exc)
            raise
        self._reached(None)
        return body

    async def _graph(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = path if path.startswith("http") else f"{self.graph_url}/{path}"
        try:
            response = await self.http.request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise PlatformError(f"WhatsApp unreachable: {exc!r}", "transient", connection=True) from None
        except httpx.HTTPError as exc:
            raise PlatformError(f"WhatsApp's answer was lost: {exc!r}", "unknown", connection=True) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400 or not isinstance(body, dict):
            raise graph_error(
                response.status_code, body if isinstance(body, dict) else {}, response.headers.get("retry-after")
            )
        return body

    def _reached(self, failure: PlatformError | None) -> None:
        """A Graph call's outcome, said as the service's trouble: set on a failure that is WhatsApp's (`graph_trouble`),
        ended by any answer about the call itself. Before the listener starts, `start` returns its failure instead."""
        trouble = graph_trouble(failure) if failure is not None else None
        self._unreached = trouble is not None
        if self._inbound is None:
            return
        if trouble is not None:
            self._inbound.reach.failed(trouble)
        else:
            self._inbound.reach.reached()

    async def start(self) -> PlatformError | None:
        if not self.phone_number_id:
            raise BridgeConfigError(
                "no phone number id: set [channels.whatsapp] phone_number_id in config.toml "
                "(Meta's app dashboard, WhatsApp > API Setup)"
            )
        try:
            info = await self._call("GET", self.phone_number_id)
        except PlatformError as exc:
            if exc.kind == "permanent":
                raise BridgeConfigError(
                    f"WhatsApp refused the phone number id {self.phone_number_id}: {exc.description}"
                ) from None
            # The service says so at once; the listener asks again until WhatsApp answers (`_ask_again`).
            log.warning("WhatsApp unreachable at start (%s); starting anyway", exc.description)
            return exc
        log.info("WhatsApp number %s (%s)", info.get("display_phone_number", "?"), info.get("verified_name", "?"))
        return None

    async def close(self) -> None:
        await self.http.aclose()

    # --- in: the front door's deliveries ---

    async def listen(self, inbound: Inbound) -> None:
        self._inbound = inbound
        puller = await bind(self.ctx.js, bridge_webhooks(CHANNEL), batch=16)
        await self._forget_old(inbound)

        async def handle(delivery: webhooks.WebhookDelivery, _msg: Any) -> None:
            if self._unreached:
                # Meta reached the front door, which says nothing of the bridge reaching the Graph API: a sign of
                # life that leaves the trouble to the next Graph answer.
                await inbound.wait(0)
            else:
                inbound.alive()
            await self.on_delivery(delivery.body, inbound)
            if time.monotonic() - self._pruned > PRUNE_EVERY:
                await self._forget_old(inbound)

        # Beside the consumer, not in a TaskGroup: the consumer's own failure reaches the service as it is.
        asking = asyncio.create_task(self._ask_again()) if self._unreached else None
        try:
            await consume(puller, webhooks.WebhookDelivery, handle, stopping=self.ctx.stopping)
        finally:
            if asking is not None:
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asking

    async def _ask_again(self) -> None:
        """Start could not reach the Graph API: ask it again (the phone number, as start did), backing off, until it
        answers, so the trouble ends when WhatsApp answers, not only at the next message sent."""
        failures = 0
        while self._unreached:
            failures += 1
            if not await sleep_unless_stopping(self.ctx.stopping, backoff(failures, cap=300.0)):
                return
            with contextlib.suppress(PlatformError):  # said as trouble by `_call`
                await self._call("GET", self.phone_number_id)

    async def _forget_old(self, inbound: Inbound) -> None:
        """Status records live as long as the sent-log (a status for an older message names nothing we
        could tell); a person's last-message time only while it can still open the window soon."""
        self._pruned = time.monotonic()
        now = time.time()
        await inbound.state.forget_cursors("sent:", now - SENDS_KEPT)
        await inbound.state.forget_cursors("window:", now - WINDOW_KEPT)

    async def on_delivery(self, body: bytes, inbound: Inbound) -> None:
        try:
            envelope = envelope_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.warning("a WhatsApp delivery that is not what Meta sends was skipped: %s", exc)
            return
        for entry in envelope.entry:
            for change in entry.changes:
                if change.field != "messages":
                    continue
                names = {c.wa_id: c.profile.name for c in change.value.contacts}
                for message in change.value.messages:
                    await self._message(message, names.get(message.from_, ""), inbound)
                for status in change.value.statuses:
                    await self._status(status)

    async def _message(self, m: Message, name: str, inbound: Inbound) -> None:
        sent_at = float(m.timestamp) if m.timestamp.isdigit() else time.time()
        await self._saw(m.from_, sent_at)
        route = ev.Route(channel=CHANNEL, chat_id=m.from_)
        sender = ev.Sender(id=m.from_, name=name)
        reply = m.interactive.button_reply or m.interactive.list_reply if m.interactive else None
        if reply is not None or m.button is not None:
            data = reply.id if reply is not None else m.button.payload if m.button else ""
            if await inbound.click(
                route, data, action_id=m.id, sender=sender, message_id=m.context.id if m.context else None
            ):
                return
            text = reply.title if reply is not None else m.button.text if m.button else ""
        elif m.reaction is not None:
            text = (
                f"[reacted {m.reaction.emoji} to message {m.reaction.message_id}]"
                if m.reaction.emoji
                else f"[removed a reaction from message {m.reaction.message_id}]"
            )
        else:
            text = m.text.body if m.text else ""
        media = next((getattr(m, k) for k in MEDIA_KINDS if getattr(m, k) is not None), None)
        attachments: tuple[ev.Attachment, ...] = ()
        if media is not None:
            text = text or media.caption
            attachments = (await self._fetch(m, media, inbound),)
        if not text and not attachments:
            text = f"[a {m.type} message, which Clawden cannot show]"
        await inbound.publish(
            ev.InboundMessage(
                route=route,
                message_id=m.id,
                sender=sender,
                text=text,
                sent_at=sent_at,
                reply_to=m.context.id if m.context and m.context.id else None,
                attachments=attachments,
            )
        )

    async def _fetch(self, m: Message, media: Media, inbound: Inbound) -> ev.Attachment:
        """GET the media id for a short-lived URL, then GET that URL with the token ("Media: download")."""
        ext = mimetypes.guess_extension(media.mime_type.split(";")[0]) or ""
        name = media.filename or f"{m.type}{ext}"
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-100:] or "file"
        dest = inbound.files_dir / m.from_ / f"{m.id[-24:].replace('=', '')}-{safe}"
        try:
            info = await self._call("GET", media.id)
            if int(info.get("file_size") or 0) > DOWNLOAD_LIMIT:
                raise PlatformError(f"{name} is over {DOWNLOAD_LIMIT} bytes", "permanent")
            response = await self.http.get(str(info["url"]))
            if response.status_code != 200:
                raise graph_error(response.status_code, {}, None)
            dest.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(dest.write_bytes, response.content)
        except (PlatformError, KeyError, httpx.HTTPError) as exc:
            log.warning("could not fetch %s of %s: %r", name, m.id, exc)
            return ev.Attachment(name=name, mime=media.mime_type)
        return ev.Attachment(name=name, mime=media.mime_type, size=dest.stat().st_size, url=dest.as_uri())

    async def _status(self, s: Status) -> None:
        """delivered, read and failed become receipts for the message WhatsApp names; sent was said at send."""
        if s.status not in REPORTED or self._inbound is None:
            return
        found = await self._sent_record(s.id)
        if found is None and self._in_flight:
            # Meta does not order webhooks against API answers: the send this names may still be waiting
            # for its answer. Wait for the sends in flight now (each ends with one Graph call), then look again.
            log.info("a %s status for %s waits for the sends in flight", s.status, s.id)
            await asyncio.wait(set(self._in_flight))
            found = await self._sent_record(s.id)
        if found is None:
            # A twin may have sent it and not noted it yet (its note follows Graph's answer). The status is left
            # beside the note, then the note looked for once more; the sender notes, then looks for what was left
            # (`_report_left`). Whichever writes second sees the other's, so one of them reports it (both may:
            # the receipt's msg_id keeps one).
            try:
                await self._shared.put(f"status:{s.id}:{s.status}", _encoder.encode(s).decode())
            except sentlog.Unavailable as exc:  # not left for the sender: the delivery is waited out instead
                raise Retry(f"the shared notes did not take a {s.status} status: {exc}", delay=2.0) from exc
            found = await self._sent_record(s.id)
        if found is None:
            # Not ours, older than we keep, or a twin's not noted yet, which the twin reports once it notes it.
            # What was left expires with the sent-log (the stream's max age) where no sender comes for it.
            log.info(
                "a %s status for %s names no message noted yet: left for the instance that sent it", s.status, s.id
            )
            return
        try:
            record = _sent_decoder.decode(found)
        except msgspec.DecodeError as exc:  # only this channel's bridges write there: said, not retried
            log.error("the record of sent message %s cannot be read: %s", s.id, exc)
            return
        await self._report(s, record)

    async def _report(self, s: Status, record: SentRecord) -> None:
        """Publish the receipt a status means for the message `record` names."""
        error = None
        if s.status == "failed":
            why = "; ".join(f"{e.title or e.message} ({e.code})" for e in s.errors) or "no reason given"
            error = f"WhatsApp could not deliver it: {why}"
        receipt = ev.DeliveryReceipt(
            outbound_id=record.outbound_id,
            route=ev.Route(channel=CHANNEL, chat_id=record.chat_id),
            ok=error is None,
            state="read" if s.status == "read" else "delivered",
            session_id=record.session_id,
            seq=record.seq,
            platform_message_id=s.id,
            error=error,
        )
        await publish(
            self.ctx.js, subjects.receipt(CHANNEL), receipt, msg_id=f"receipt:{record.outbound_id}:{s.status}"
        )

    async def _report_left(self, wamid: str, record: SentRecord) -> None:
        """Report the statuses of a message this instance has just noted that a twin took before the note was
        there (`_status` left them). Best effort, as the note: the bus failing costs those receipts, not the send."""
        for status in REPORTED:
            try:
                left = await self._shared.get(f"status:{wamid}:{status}")
                if left is not None:
                    await self._report(_status_decoder.decode(left), record)
            except (sentlog.Unavailable, NatsError, TimeoutError) as exc:
                log.warning("the %s status a twin left for %s was not reported: %r", status, wamid, exc)
            except msgspec.DecodeError as exc:  # only this channel's bridges write there: said, not retried
                log.error("the %s status a twin left for %s cannot be read: %s", status, wamid, exc)

    async def _sent_record(self, wamid: str) -> str | None:
        """The record of a message this instance sent, or a twin did (None: neither, or older than kept)."""
        assert self._inbound is not None
        found = await self._inbound.state.cursor(f"sent:{wamid}")
        if found:
            return found[0]
        try:
            return await self._shared.get(f"sent:{wamid}")
        except sentlog.Unavailable as exc:  # the bus's trouble, not the status's: the delivery is waited out
            raise Retry(f"the shared notes: {exc}", delay=2.0) from exc

    async def _saw(self, wa_id: str, at: float) -> None:
        """The person wrote at `at`: their customer-service window runs 24 hours from the latest message."""
        if self._inbound is None:
            return
        state = self._inbound.state
        known = await state.cursor(f"window:{wa_id}")
        if known is None or float(known[0]) < at:
            await state.set_cursor(f"window:{wa_id}", str(at))
        await self._share(
            self._shared.raise_to(f"window:{wa_id}", str(at), lambda new, there: float(new) > _float(there))
        )

    @staticmethod
    async def _share(note: Awaitable[None]) -> None:
        """Tell the twins what this instance knows; the bus not taking it costs them, never this instance's own
        work (the message was read, the send went): a twin then answers from what it knows itself."""
        try:
            await note
        except sentlog.Unavailable as exc:
            log.warning("the twins were not told (the shared notes did not take it): %s", exc)

    # --- out ---

    def about_to_send(self, event: ev.OutboundMessage) -> None:
        self._pending[event.id] = event
        while len(self._pending) > PENDING_KEPT:  # oldest first; a redelivered message is announced again
            self._pending.pop(next(iter(self._pending)))

    async def _window_open(self, wa_id: str) -> None:
        state = self._inbound.state if self._inbound else None
        known = await state.cursor(f"window:{wa_id}") if state else None
        last = float(known[0]) if known else None
        if last is None or time.time() - last >= WINDOW:  # the person may have written to a twin meanwhile
            there = await self._shared.get(f"window:{wa_id}")
            last = max(last or 0.0, _float(there)) if there is not None else last
        since = time.time() - last if last is not None else None
        if since is not None and since < WINDOW:
            return
        note = WINDOW_REFUSAL.format(ago=ago(since) if since is not None else "never")
        if self.template:
            try:
                await self._post_message(
                    wa_id,
                    {
                        "type": "template",
                        "template": {"name": self.template, "language": {"code": self.template_language}},
                    },
                )
                note += f"; the template {self.template!r} was sent to invite a reply"
            except PlatformError as exc:
                note += f"; the template {self.template!r} could not be sent either ({exc.description})"
        raise PlatformError(note, "permanent", code=131047)

    async def _post_message(self, to: str, fields: dict[str, Any], reply_to: str | None = None) -> str:
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, **fields}
        if reply_to:
            payload["context"] = {"message_id": reply_to}
        body = await self._call("POST", f"{self.phone_number_id}/messages", json=payload)
        try:
            return str(body["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise PlatformError(f"WhatsApp answered without a message id: {str(body)[:200]}", "unknown") from None

    @contextlib.asynccontextmanager
    async def _sending(self) -> AsyncIterator[None]:
        """A send from its Graph call until its wamid is noted (or it failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._in_flight.add(done)
        try:
            yield
        finally:
            self._in_flight.discard(done)
            done.set_result(None)

    async def _remember(self, wamid: str, key: str, chat_id: str) -> None:
        event = self._pending.get(key.rsplit("#", 1)[0])
        if event is None or self._inbound is None:
            return
        record = SentRecord(event.id, event.session_id, event.seq, chat_id)
        note = _encoder.encode(record).decode()
        await self._inbound.state.set_cursor(f"sent:{wamid}", note)
        await self._share(self._shared.put(f"sent:{wamid}", note))  # a status callback may come to a twin
        await self._report_left(wamid, record)

    async def send_text(
        self, route: ev.Route, text: str, *, reply_to: str | None, buttons: list[list[ButtonRef]], key: str
    ) -> str:
        await self._window_open(route.chat_id)
        flat = [b for row in buttons for b in row]
        fields: dict[str, Any] = {"type": "text", "text": {"body": text, "preview_url": False}}
        if flat:
            shaped = interactive(text, flat) if len(text) <= MAX_BODY_WITH_BUTTONS else None
            if shaped is not None:
                fields = {"type": "interactive", "interactive": shaped}
            elif len(flat) > MAX_ROWS or len(text) > MAX_BODY_WITH_BUTTONS:
                fields = {"type": "text", "text": {"body": numbered(text, flat)[:MAX_TEXT], "preview_url": False}}
        async with self._sending():
            wamid = await self._post_message(route.chat_id, fields, reply_to)
            await self._remember(wamid, key, route.chat_id)
        return wamid

    async def send_file(self, route: ev.Route, path: Path, *, key: str) -> str:
        await self._window_open(route.chat_id)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        kind = media_kind(mime)
        uploaded = await self._call(
            "POST",
            f"{self.phone_number_id}/media",
            data={"messaging_product": "whatsapp", "type": mime},
            files={"file": (path.name, await asyncio.to_thread(path.read_bytes), mime)},
        )
        media: dict[str, Any] = {"id": str(uploaded["id"])}
        if kind == "document":
            media["filename"] = path.name
        async with self._sending():
            wamid = await self._post_message(route.chat_id, {"type": kind, kind: media})
            await self._remember(wamid, key, route.chat_id)
        return wamid

    async def react(self, route: ev.Route, target: str, emoji: str) -> None:
        await self._window_open(route.chat_id)
        await self._post_message(
            route.chat_id, {"type": "reaction", "reaction": {"message_id": target, "emoji": emoji}}
        )


async def check_token(cfg: Config, environ: dict[str, str]) -> str:
    """`clawden doctor`: the token against the phone number id (GET /<phone_number_id>)."""
    settings = channel_settings(cfg, CHANNEL, environ)
    token = read_secret(cfg, CHANNEL, environ)
    number = settings.get("phone_number_id", "")
    if not number:
        raise BridgeConfigError("set [channels.whatsapp] phone_number_id in config.toml")
    async with httpx.AsyncClient(timeout=10, headers={"authorization": f"Bearer {token}"}) as client:
        response = await client.get(f"{settings.get('graph_url', GRAPH_URL).rstrip('/')}/{number}")
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        exc = graph_error(response.status_code, body, None)
        exc.code = response.status_code
        raise exc
    return f"{body.get('verified_name', '?')} ({body.get('display_phone_number', number)})"


async def main(ctx: ServiceContext) -> None:
    token = read_secret(ctx.config, CHANNEL)
    await service.serve(ctx, WhatsAppBridge(ctx, token, channel_settings(ctx.config, CHANNEL)))
