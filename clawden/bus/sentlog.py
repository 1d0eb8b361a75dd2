"""A bridge's shared sent-log: one record per part of an outbound message, kept on the bus (the stream
CLAWDEN_SENT, the last record per subject, read with a direct get), so every instance of the bridge knows
what any of them began or finished sending.

Each instance still keeps its own sent-log (`services/channels/state.py`, the fast path and what edits use);
this one is the truth across instances. A part is claimed by writing 'sending' on the condition that nothing
is there (`Nats-Expected-Last-Subject-Sequence`), so of two instances handed the same message only one may
send a part; the other learns what the first left: 'sent' (with the platform id), 'failed', or a send whose
outcome nobody knows. A bridge identity may write and read only its own channel's records (natsauth.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import Header, RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from clawden.bus import subjects

log = logging.getLogger("clawden.bus")

STREAM = "CLAWDEN_SENT"
# 'unsent': the platform certainly did not act (a retryable refusal): the part may be claimed and sent again.
PartState = Literal["sending", "sent", "failed", "unconfirmed", "unsent"]
PartKind = Literal["", "text", "file"]
# What JetStream answers a write whose expected last subject sequence is not the subject's last.
_WRONG_LAST = (10071, 10164)
# Claims in a row refused by records that each allowed another try: only writers racing without end get there.
CLAIM_TRIES = 5


class PartRecord(msgspec.Struct, frozen=True, kw_only=True, tag="sent.part", tag_field="type"):
    """One part of one outbound message, as the last instance that touched it left it."""

    outbound_id: str
    part: int
    state: PartState
    by: str  # the bridge instance that wrote it (`BridgeState.instance_id`)
    platform_id: str = ""
    error: str = ""
    kind: PartKind = ""
    at: float = 0.0
    # When the part was first claimed for the platform, kept by every later claim: a platform that drops a repeat
    # of one send's key does so only for a while after the send (0: not known, never repeated on the chance).
    tried: float = 0.0
    removed: bool = False  # an edit took the part away (or emptied it): later edits, on any instance, leave it be


DECODER = msgspec.json.Decoder(PartRecord)
_encoder = msgspec.json.Encoder()


def direct_get(channel: str) -> str:
    """What a bridge publishes to read one of its channel's records (a grant names it: natsauth.py)."""
    return f"$JS.API.DIRECT.GET.{STREAM}.{subjects.sent_all(channel)}"


@dataclass(frozen=True)
class Found:
    """The record a part's subject holds, at its stream sequence; `record` None where it does not decode."""

    seq: int
    record: PartRecord | None


class Unavailable(Exception):
    """The shared sent-log did not answer (NATS away, a stream without a leader): nothing may be sent now."""


def may_claim_over(found: PartRecord | None, me: str, *, dedupe_window: float, now: float) -> bool:
    """After a claim was refused: may this instance (`me`) claim the part over `found`, the record there now?

    'unsent': nobody is sending it. 'sending' by this instance: its own claim, repeated (a retry within one
    delivery, a claim whose answer was lost, a crash between the claim and the platform call); delivery reads
    its own sent-log first, where a crash after the call left 'sending', so it claims again only where its
    log says nothing or it means to send again. Anything else stays, unless the platform drops a repeat of the
    same key for `dedupe_window` seconds after a send, and the part was first tried within that: then a part
    whose outcome is unknown may go again. 'sent' and 'failed' never do, nor a record that cannot be read."""
    if found is None:
        return False
    if found.state == "unsent" or (found.state == "sending" and found.by == me):
        return True
    return found.state in ("sending", "unconfirmed") and found.tried > 0 and now - found.tried < dedupe_window


class SentLog:
    """One channel's records, as instance `instance` of its bridge reads and writes them."""

    def __init__(self, js: JetStreamContext, channel: str, instance: str, *, timeout: float = 5.0) -> None:
        self.js = js
        self.channel = subjects.token(channel)
        self.instance = instance
        self.timeout = timeout
        self._tried: dict[tuple[str, int], float] = {}  # the parts this instance holds: when each was first tried

    async def claim(self, outbound_id: str, part: int, kind: PartKind, *, dedupe_window: float) -> Found | None:
        """Write 'sending' for the part, where nothing (or a record `may_claim_over` allows) is there: None once
        this instance holds it, else what is there. Raises `Unavailable` when the bus does not answer: a part is
        never sent without its claim stored."""
        now = time.time()
        claim = PartRecord(outbound_id=outbound_id, part=part, state="sending", by=self.instance, kind=kind, tried=now)
        expected = 0
        for _ in range(CLAIM_TRIES):
            if await self._write(msgspec.structs.replace(claim, at=time.time()), expected=expected):
                self._tried[outbound_id, part] = claim.tried
                return None
            found = await self.read(outbound_id, part)
            if found is None:
                expected = 0  # the record expired meanwhile
            elif may_claim_over(found.record, self.instance, dedupe_window=dedupe_window, now=now):
                expected = found.seq
                assert found.record is not None  # (may_claim_over refuses an unreadable one)
                if found.record.tried:  # the platform's window runs from the first try, whoever made it
                    claim = msgspec.structs.replace(claim, tried=min(claim.tried, found.record.tried))
            else:
                return found
        raise Unavailable(f"the record of {outbound_id} part {part} kept changing under {CLAIM_TRIES} claims")

    async def record(
        self,
        outbound_id: str,
        part: int,
        state: PartState,
        *,
        platform_id: str = "",
        error: str = "",
        kind: PartKind = "",
        removed: bool = False,
    ) -> None:
        """What became of a part this instance claimed (one write, whatever is there: the claim made it ours), or
        that an edit took a sent part away (`removed`)."""
        await self._write(
            PartRecord(
                outbound_id=outbound_id,
                part=part,
                state=state,
                by=self.instance,
                platform_id=platform_id,
                error=error,
                kind=kind,
                at=time.time(),
                tried=self._tried.pop((outbound_id, part), 0.0),
                removed=removed,
            )
        )

    async def parts(self, outbound_id: str) -> dict[int, PartRecord]:
        """The parts of the message the log holds, by number: read in order until one is missing or unreadable."""
        found: dict[int, PartRecord] = {}
        while (record := await self.read(outbound_id, len(found))) is not None:
            if record.record is None:
                break
            found[len(found)] = record.record
        return found

    async def read(self, outbound_id: str, part: int) -> Found | None:
        """The part's record, None where there is none. One that does not decode is logged and returned as
        unreadable (`Found.record` None): only this channel's bridges write here, so some instance claimed
        the part, and the reader must not take it for unsent."""
        subject = subjects.sent(self.channel, outbound_id, part)
        msg = await _last(self.js, subject)
        if msg is None:
            return None
        try:
            record = DECODER.decode(msg.data or b"")
        except msgspec.DecodeError as exc:  # a ValidationError too
            log.error("unreadable record on %s (seq %s): %s", subject, msg.seq, exc)
            record = None
        return Found(msg.seq or 0, record)

    async def _write(self, record: PartRecord, *, expected: int | None = None) -> bool:
        """Store `record`; with `expected`, only while the subject's last sequence is that (0: no record):
        False where it was not. Raises `Unavailable` when the bus does not answer."""
        subject = subjects.sent(self.channel, record.outbound_id, record.part)
        return await _store(self.js, subject, _encoder.encode(record), expected, self.timeout)


async def _last(js: JetStreamContext, subject: str) -> RawStreamMsg | None:
    """The last message on `subject` (direct get), None where there is none; `Unavailable` when no answer."""
    try:
        return await js.get_last_msg(STREAM, subject, direct=True)
    except NotFoundError:
        return None
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(f"cannot read {subject}: {exc!r}") from exc


async def _store(js: JetStreamContext, subject: str, data: bytes, expected: int | None, timeout: float) -> bool:
    """Store `data` at `subject`; with `expected`, only while the subject's last sequence is that (0: none there):
    False where it was not. Raises `Unavailable` when the bus does not answer."""
    headers = None if expected is None else {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(expected)}
    try:
        await js.publish(subject, data, timeout=timeout, headers=headers)
    except APIError as exc:
        if expected is not None and exc.err_code in _WRONG_LAST:
            return False
        raise Unavailable(f"cannot write {subject}: {exc!r}") from exc
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(f"cannot write {subject}: {exc!r}") from exc
    return True


class SharedNotes:
    """Facts a bridge's instances share beside its sent-log, one text per name (the last written), in the same
    stream and under the same grant: what the instance that heard a webhook knows and a twin that sends needs
    (WhatsApp's 24-hour window, which message a status callback names). Kept as long as the sent-log."""

    def __init__(self, js: JetStreamContext, channel: str, *, timeout: float = 5.0) -> None:
        self.js = js
        self.channel = subjects.token(channel)
        self.timeout = timeout

    async def get(self, name: str) -> str | None:
        found = await self._get(name)
        return found[1] if found else None

    async def put(self, name: str, value: str) -> None:
        await self._put(name, value)

    async def raise_to(self, name: str, value: str, newer: Callable[[str, str], bool]) -> None:
        """Write `value` unless what is there is as new (`newer(value, there)` false): a check and set, so two
        instances writing at once never leave the older."""
        for _ in range(CLAIM_TRIES):
            found = await self._get(name)
            if found is not None and not newer(value, found[1]):
                return
            if await self._put(name, value, expected=found[0] if found else 0):
                return
        raise Unavailable(f"the note {name!r} kept changing under {CLAIM_TRIES} writes")

    async def _get(self, name: str) -> tuple[int, str] | None:
        msg = await _last(self.js, subjects.sent_note(self.channel, name))
        return None if msg is None else (msg.seq or 0, (msg.data or b"").decode(errors="replace"))

    async def _put(self, name: str, value: str, *, expected: int | None = None) -> bool:
        return await _store(self.js, subjects.sent_note(self.channel, name), value.encode(), expected, self.timeout)
