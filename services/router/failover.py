"""A runner declared gone, with `[runner] shared_storage`: its sessions move to live runners (issue 25 item 3).

The store decides and records each move (`RouterStore.move_sessions`); this module reads what the gone runner
had not yet taken from its wake subject. Its durable's ack floor says how far it got: every wake at or below it
was written into the session's folder before the ack (the runner acks after the write), and that folder is on
the shared storage the new runner reads. Every wake above it on `clawden.wake.<gone>` may not have been, so it
is re-sent to the session's new runner; one already written is the same row again (the folder's insert is keyed
by the message), so re-sending too much costs nothing and re-sending too little cannot happen."""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from clawden.bus import events as ev
from clawden.bus import subjects
from clawden.bus.streams import runner_wake

log = logging.getLogger("clawden.router")


async def untaken_wakes(js: JetStreamContext, runner: str) -> dict[str, list[ev.Wake]]:
    """The wakes on `runner`'s subject past its durable's ack floor, by session, in stream order. A runner that
    never made its durable took none of them."""
    durable = runner_wake(runner)
    try:
        seq = (await js.consumer_info(durable.stream, durable.durable)).ack_floor.stream_seq + 1
    except NotFoundError:
        seq = 1
    found: dict[str, list[ev.Wake]] = {}
    while True:
        try:
            msg = await js.get_msg(durable.stream, seq=seq, subject=durable.filter_subject, next=True)
        except NotFoundError:
            return found
        assert msg.seq is not None
        seq = msg.seq + 1
        try:
            event = ev.WAKE_DECODER.decode(msg.data or b"")
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("skipping an unreadable message %d on %s: %s", msg.seq, subjects.wake(runner), exc)
            continue
        if isinstance(event, ev.Wake):  # an earlier Adopt means nothing now: the move sends its own
            found.setdefault(event.session_id, []).append(event)
