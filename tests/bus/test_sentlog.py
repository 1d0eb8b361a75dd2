"""The shared sent-log of a bridge's instances: its record, its decoder, who may claim a part over what record, and
the claims themselves against a real nats-server."""

from __future__ import annotations

import contextlib
import logging

import msgspec
import pytest
from nats.aio.client import Client

from clawden.bus import connect, ensure_streams, subjects
from clawden.bus.sentlog import DECODER, PartRecord, SentLog, SharedNotes, Unavailable, may_claim_over
from tests.conftest import NatsServer


def record(state: str, by: str = "a", **extra: object) -> PartRecord:
    return PartRecord(outbound_id="o1", part=0, state=state, by=by, **extra)  # type: ignore[arg-type]


def test_a_record_round_trips_through_its_decoder() -> None:
    sent = record("sent", platform_id="5:10", kind="text", at=12.5)
    assert DECODER.decode(msgspec.json.encode(sent)) == sent
    # Fields a newer bridge adds are tolerated: an older instance beside it still reads the record.
    newer = b'{"type":"sent.part","outbound_id":"o1","part":0,"state":"sent","by":"a","platform_id":"1","via":"x"}'
    assert DECODER.decode(newer) == record("sent", platform_id="1")


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (b'{"type":"sent.part","outbound_id":"o1","part":0,"state":"gone","by":"a"}', "$.state"),
        (b'{"type":"sent.part","outbound_id":"o1","part":"0","state":"sent","by":"a"}', "$.part"),
        (b'{"type":"sent.part","outbound_id":"o1","part":0,"state":"sent"}', "by"),
        (b'{"type":"other","outbound_id":"o1","part":0,"state":"sent","by":"a"}', "$.type"),
    ],
)
def test_a_malformed_record_is_refused_with_its_path(payload: bytes, path: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$")):
        DECODER.decode(payload)


def test_subjects_name_a_hash_of_the_outbound_id_so_any_id_is_a_valid_subject() -> None:
    subject = subjects.sent("telegram", "receipt:a.b c>*#1", 2)
    prefix, channel, digest, part = subject.rsplit(".", 3)
    assert (prefix, channel, part) == ("clawden.sent", "telegram", "2")
    assert subjects.token(digest) == digest
    assert subjects.sent("telegram", "receipt:a.b c>*#1", 2) == subject  # stable across processes
    assert subjects.sent("telegram", "receipt:a.b c>*#2", 2) != subject
    with pytest.raises(ValueError, match="no part"):
        subjects.sent("telegram", "o1", -1)


NOW = 1_000_000.0
WINDOW = 120.0  # the platform drops a repeat of a send's key for two minutes after it (Discord's nonce)


@pytest.mark.parametrize(
    ("found", "window", "claim"),
    [
        (None, 0, False),  # unreadable: someone claimed it, nobody knows how it went
        (None, WINDOW, False),  # ... nor when: a repeat may come too late for the platform to drop it
        (record("unsent", by="b"), 0, True),  # the platform certainly did not take it
        (record("sending", by="me"), 0, True),  # its own claim, repeated
        (record("sending", by="b", tried=NOW - 10), 0, False),  # another's send in flight, or cut off mid-call
        (record("sending", by="b", tried=NOW - 10), WINDOW, True),  # ... which the platform would drop if repeated
        (record("sending", by="b", tried=NOW - WINDOW), WINDOW, False),  # ... but no longer
        (record("sending", by="b"), WINDOW, False),  # ... nor from before first tries were kept
        (record("unconfirmed", by="b", tried=NOW - 10), 0, False),
        (record("unconfirmed", by="me", tried=NOW - 10), 0, False),  # its own lost answer is not sent again
        (record("unconfirmed", by="b", tried=NOW - 10), WINDOW, True),
        (record("sent", by="b", tried=NOW - 10), WINDOW, False),  # sent and failed stand, whoever asks
        (record("sent", by="me", tried=NOW - 10), WINDOW, False),
        (record("failed", by="b", tried=NOW - 10), WINDOW, False),
    ],
)
def test_who_may_claim_a_part_over_the_record_there(found: PartRecord | None, window: float, claim: bool) -> None:
    assert may_claim_over(found, "me", dedupe_window=window, now=NOW) is claim


async def test_of_two_instances_only_the_first_claims_a_part_and_the_second_learns_what_came_of_it(
    nc: Client,
) -> None:
    await ensure_streams(nc.jetstream())
    a, b = SentLog(nc.jetstream(), "telegram", "a"), SentLog(nc.jetstream(), "telegram", "b")
    assert await a.claim("o1", 0, "text", dedupe_window=0) is None
    taken = await b.claim("o1", 0, "text", dedupe_window=0)
    assert taken is not None and taken.record is not None
    assert (taken.record.state, taken.record.by) == ("sending", "a")
    await a.record("o1", 0, "sent", platform_id="5:10", kind="text")
    taken = await b.claim("o1", 0, "text", dedupe_window=WINDOW)  # 'sent' stands even where repeats are dropped
    assert taken is not None and taken.record is not None
    assert (taken.record.state, taken.record.platform_id, taken.record.kind) == ("sent", "5:10", "text")
    assert await b.claim("o1", 1, "text", dedupe_window=0) is None  # another part is another record


async def test_a_part_left_unsent_may_be_claimed_by_another_instance(nc: Client) -> None:
    await ensure_streams(nc.jetstream())
    a, b = SentLog(nc.jetstream(), "telegram", "a"), SentLog(nc.jetstream(), "telegram", "b")
    assert await a.claim("o1", 0, "text", dedupe_window=0) is None
    await a.record("o1", 0, "unsent", error="Too Many Requests")
    assert await b.claim("o1", 0, "text", dedupe_window=0) is None
    found = await a.read("o1", 0)
    assert found is not None and found.record is not None and found.record.by == "b"


async def test_an_unreadable_record_is_logged_and_never_taken_for_unsent(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(subjects.sent("telegram", "o1", 0), b'{"type":"sent.part","state":"beamed"}')
    b = SentLog(js, "telegram", "b")
    with caplog.at_level(logging.ERROR, "clawden.bus"):
        taken = await b.claim("o1", 0, "text", dedupe_window=0)
    assert taken is not None and taken.record is None and taken.seq > 0
    assert f"unreadable record on {subjects.sent('telegram', 'o1', 0)}" in caplog.text
    # nor where repeats are dropped: when it was first tried is not known
    taken = await b.claim("o1", 0, "text", dedupe_window=WINDOW)
    assert taken is not None and taken.record is None


async def test_a_claim_or_a_read_while_the_bus_is_away_raises(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, "test")
    try:
        await ensure_streams(nc.jetstream())
        nats_server.stop()
        shared = SentLog(nc.jetstream(timeout=0.5), "telegram", "a", timeout=0.5)
        with pytest.raises(Unavailable):
            await shared.claim("o1", 0, "text", dedupe_window=0)
        with pytest.raises(Unavailable):
            await shared.read("o1", 0)
    finally:
        with contextlib.suppress(ConnectionError):  # closing towards a server that went away
            await nc.close()


async def test_shared_notes_keep_the_newest_whoever_writes_last_and_live_beside_the_parts(nc: Client) -> None:
    await ensure_streams(nc.jetstream())
    a, b = SharedNotes(nc.jetstream(), "whatsapp"), SharedNotes(nc.jetstream(), "whatsapp")
    newer = lambda new, there: float(new) > float(there)  # noqa: E731
    assert await a.get("window:447700900123") is None
    await a.raise_to("window:447700900123", "200.0", newer)
    await b.raise_to("window:447700900123", "100.0", newer)  # an older message, heard late by the twin
    assert await b.get("window:447700900123") == "200.0"
    await b.raise_to("window:447700900123", "300.0", newer)
    assert await a.get("window:447700900123") == "300.0"
    await a.put("sent:wamid.1", '{"x": 1}')
    assert await b.get("sent:wamid.1") == '{"x": 1}'
    assert await SharedNotes(nc.jetstream(), "telegram").get("sent:wamid.1") is None  # another channel's
    note = subjects.sent_note("whatsapp", "sent:wamid.1")
    assert note.startswith("clawden.sent.whatsapp.note.") and note != subjects.sent("whatsapp", "sent:wamid.1", 0)
