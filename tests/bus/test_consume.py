"""The one consume loop, by batches, against a real nats-server: what has arrived is handed over
together, stopping ends it, and a startup drain returns once nothing is left, keeping its pull open."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from clawden import natsserver
from clawden.bus import (
    Consumer,
    Retry,
    bind,
    connect,
    consume,
    consume_batches,
    ensure_streams,
    publish,
    publish_stored,
    subjects,
)
from clawden.bus import events as ev
from tests.conftest import NatsServer
from tests.eventually import eventually

ROUTE = ev.Route(channel="local", chat_id="tty")


def message(n: int) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ROUTE, message_id=str(n), sender=ev.Sender(id="local:me"), text=f"hello {n}", sent_at=float(n)
    )


async def test_what_has_arrived_comes_as_batches_until_stopping(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    for n in range(5):
        await publish(js, subjects.inbound("local"), message(n), msg_id=message(n).key)
    puller = await bind(js, Consumer("CLAWDEN_INBOUND", "batches", subjects.ALL_INBOUND), batch=16)
    seen: list[list[str]] = []
    stopping = asyncio.Event()

    async def handle(msgs: list[Msg]) -> None:
        seen.append([ev.decoder_for(ev.InboundMessage).decode(m.data).message_id for m in msgs])
        for m in msgs:
            await m.ack()
        if sum(map(len, seen)) == 5:
            stopping.set()

    await asyncio.wait_for(consume_batches(puller, handle, stopping=stopping), 10)
    assert [i for batch in seen for i in batch] == ["0", "1", "2", "3", "4"]
    assert len(seen) < 5, "messages that were waiting came together, not one at a time"


async def test_a_startup_drain_returns_when_nothing_is_left_and_the_loop_after_it_takes_the_rest(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    for n in range(3):
        await publish(js, subjects.inbound("local"), message(n), msg_id=message(n).key)
    puller = await bind(js, Consumer("CLAWDEN_INBOUND", "drained", subjects.ALL_INBOUND))
    handled: list[str] = []
    stopping = asyncio.Event()

    async def handler(event: ev.InboundMessage, msg: Msg) -> None:
        handled.append(event.message_id)
        if event.message_id == "late":
            stopping.set()

    await asyncio.wait_for(consume(puller, ev.InboundMessage, handler, stopping=stopping, until_idle=0.5), 10)
    assert handled == ["0", "1", "2"] and not stopping.is_set()
    late = ev.InboundMessage(route=ROUTE, message_id="late", sender=ev.Sender(id="local:me"), text="late", sent_at=9.0)
    await publish(js, subjects.inbound("local"), late, msg_id=late.key)
    await asyncio.wait_for(consume(puller, ev.InboundMessage, handler, stopping=stopping), 10)
    assert handled == ["0", "1", "2", "late"]

    async def all_acked() -> bool:  # an ack is a plain publish: the server counts it a moment later
        info = await js.consumer_info("CLAWDEN_INBOUND", "drained")
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await eventually(all_acked, message="every message is acked")


async def test_a_line_published_while_nats_restarts_is_stored_once_it_is_back(
    nats_server: NatsServer, nc: Client
) -> None:
    """What `clawden chat` sends has no redelivery behind it: it is asked again until stored, and the same
    msg_id keeps every try after the stored one from storing it twice."""
    js = nc.jetstream()
    await ensure_streams(js)
    line = message(7)
    nats_server.stop()
    with pytest.raises(NatsTimeoutError):  # bounded: it says so when the server stays away
        await publish_stored(js, subjects.inbound("local"), line, msg_id=line.key, within=0.5, per_try=0.2)
    sending = asyncio.create_task(publish_stored(js, subjects.inbound("local"), line, msg_id=line.key, per_try=0.5))
    await eventually(lambda: nc.is_reconnecting, timeout=10)
    nats_server.restart()
    await asyncio.wait_for(sending, 60)
    await publish_stored(js, subjects.inbound("local"), line, msg_id=line.key)  # a retry after it was stored
    assert (await js.stream_info("CLAWDEN_INBOUND")).state.messages == 1


async def test_a_line_published_while_no_stream_answers_is_stored_once_one_does(nc: Client) -> None:
    """A subject no stream answers for yet (a cluster's stream between leaders, or before the streams are made):
    nats-py raises NoStreamResponseError, and the line is asked again until the stream is there."""
    js = nc.jetstream()
    tries: list[str] = []
    publish_once = js.publish

    async def counted(*args: Any, **kwargs: Any) -> Any:
        tries.append(args[0])
        return await publish_once(*args, **kwargs)

    js.publish = counted  # type: ignore[method-assign]
    line = message(8)
    sending = asyncio.create_task(publish_stored(js, subjects.inbound("local"), line, msg_id=line.key, per_try=0.5))
    await eventually(lambda: len(tries) >= 2, timeout=10)  # refused at least once: no stream yet
    assert not sending.done()
    await ensure_streams(js)
    await asyncio.wait_for(sending, 30)
    assert (await js.stream_info("CLAWDEN_INBOUND")).state.messages == 1


async def test_a_message_jetstream_gives_up_on_is_said_in_the_log_not_dropped_in_silence(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await publish(js, subjects.inbound("local"), message(7), msg_id=message(7).key)
    puller = await bind(js, Consumer("CLAWDEN_INBOUND", "gives-up", subjects.ALL_INBOUND, max_deliver=2))
    stopping = asyncio.Event()
    tries: list[str] = []

    async def broken(event: ev.InboundMessage, msg: Msg) -> None:
        tries.append(event.message_id)
        raise RuntimeError("a handler that fails each time")

    with caplog.at_level(logging.ERROR, logger="clawden.bus"):
        loop = asyncio.create_task(consume(puller, ev.InboundMessage, broken, stopping=stopping))
        await eventually(lambda: puller.given_up == 1, 20)
        stopping.set()
        await loop
    assert tries == ["7", "7"]
    info = await js.stream_info("CLAWDEN_INBOUND")
    said = [r.getMessage() for r in caplog.records]
    assert (
        f"gives-up gave up on message {info.state.last_seq} of CLAWDEN_INBOUND after 2 deliveries: it is not"
        " handled, and is left in the stream" in said
    )


async def test_a_handler_that_waits_longer_than_max_deliver_allows_loses_nothing(nc: Client) -> None:
    """A `Retry` (the vault away, a folder locked) is waited out holding the delivery, not by redelivery: however
    long it lasts, the message is handled once it can be, and JetStream never gives up on it."""
    js = nc.jetstream()
    await ensure_streams(js)
    await publish(js, subjects.inbound("local"), message(8), msg_id=message(8).key)
    puller = await bind(js, Consumer("CLAWDEN_INBOUND", "waits", subjects.ALL_INBOUND, ack_wait=1.0, max_deliver=2))
    stopping = asyncio.Event()
    deliveries: list[int] = []

    async def ready_at_the_sixth_try(event: ev.InboundMessage, msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if len(deliveries) < 6:
            raise Retry("not yet", delay=0.4)  # five waits of 0.4 s outlast the 1 s ack wait
        stopping.set()

    await asyncio.wait_for(consume(puller, ev.InboundMessage, ready_at_the_sixth_try, stopping=stopping), 30)
    assert deliveries == [1] * 6
    assert puller.given_up == 0

    async def acked() -> Any:
        info = await js.consumer_info("CLAWDEN_INBOUND", "waits")
        return info if info.num_ack_pending == 0 else None  # the ack is a publish: read once the server has it

    assert (await eventually(acked, 10)).num_redelivered == 0


async def test_a_message_waiting_at_a_stop_is_handed_back_and_taken_at_the_next_start(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await publish(js, subjects.inbound("local"), message(9), msg_id=message(9).key)
    # A delivery left to lapse would come again only after two minutes: a handed-back one after its wait.
    consumer = Consumer("CLAWDEN_INBOUND", "handback", subjects.ALL_INBOUND, ack_wait=120.0)
    stopping, waited = asyncio.Event(), asyncio.Event()

    async def not_now(event: ev.InboundMessage, msg: Msg) -> None:
        waited.set()
        raise Retry("the vault is away", delay=1.0)

    loop = asyncio.create_task(consume(await bind(js, consumer), ev.InboundMessage, not_now, stopping=stopping))
    await asyncio.wait_for(waited.wait(), 10)
    stopping.set()
    await asyncio.wait_for(loop, 10)

    taken: list[tuple[str, int]] = []
    done = asyncio.Event()

    async def now(event: ev.InboundMessage, msg: Msg) -> None:
        taken.append((event.message_id, msg.metadata.num_delivered))
        done.set()

    await asyncio.wait_for(consume(await bind(js, consumer), ev.InboundMessage, now, stopping=done), 30)
    assert taken == [("9", 2)]


class Returns:
    """A `bus.connect` watcher: `returned` is set once the connection is back (after its pulls were renewed)."""

    def __init__(self) -> None:
        self.returned = asyncio.Event()

    async def lost(self) -> None:
        self.returned.clear()

    async def back(self) -> None:
        self.returned.set()


async def test_after_a_nats_restart_the_loop_takes_a_new_message_at_once_not_when_its_lost_pull_expires(
    nats_server: NatsServer,
) -> None:
    """The pull request a consumer had open went with the server. `bus.connect`'s reconnect makes it again at once:
    here the pull's expiry is ten minutes, so a loop that waited for it would not see the message in time."""
    returns = Returns()
    nc = await connect(nats_server.url, "restarted", watcher=returns)
    js = nc.jetstream()
    await ensure_streams(js)
    puller = await bind(js, Consumer("CLAWDEN_INBOUND", "restarted", subjects.ALL_INBOUND), batch=16)
    puller.expires = 600.0
    seen: asyncio.Queue[str] = asyncio.Queue()
    stopping = asyncio.Event()

    async def handle(msgs: list[Msg]) -> None:
        for m in msgs:
            seen.put_nowait(ev.decoder_for(ev.InboundMessage).decode(m.data).message_id)
            await m.ack()

    loop = asyncio.create_task(consume_batches(puller, handle, stopping=stopping))
    try:
        await publish(js, subjects.inbound("local"), message(1), msg_id=message(1).key)
        assert await asyncio.wait_for(seen.get(), 10) == "1"  # its pull is open
        nats_server.proc.kill()
        await asyncio.to_thread(nats_server.proc.wait)
        nats_server.proc = await asyncio.to_thread(natsserver.start, nats_server.port, nats_server.store)
        await asyncio.wait_for(returns.returned.wait(), 30)
        await publish(js, subjects.inbound("local"), message(2), msg_id=message(2).key)

        # A SIGKILLed server may not have written the ack of 1 yet, and delivers it again: at least once, as JetStream
        # is.
        got = [await asyncio.wait_for(seen.get(), 30)]
        while got[-1] != "2":
            got.append(await asyncio.wait_for(seen.get(), 30))
        assert set(got[:-1]) <= {"1"}, got
    finally:
        stopping.set()
        await asyncio.wait_for(loop, 10)
        await nc.close()
