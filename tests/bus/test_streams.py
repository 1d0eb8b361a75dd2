"""Streams, dedupe and the consume loop against a real nats-server."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from clawden.bus import (
    Consumer,
    ConsumeStats,
    bind,
    consume,
    ensure_consumer,
    ensure_streams,
    publish,
    subjects,
)
from clawden.bus import events as ev
from clawden.bus.streams import STREAMS

ROUTE = ev.Route(channel="local", chat_id="tty")


def message(n: int) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ROUTE, message_id=str(n), sender=ev.Sender(id="local:me"), text=f"hello {n}", sent_at=float(n)
    )


async def test_same_event_published_twice_with_its_natural_id_is_stored_once(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    first = await publish(js, subjects.inbound("local"), message(1), msg_id=message(1).key)
    again = await publish(js, subjects.inbound("local"), message(1), msg_id=message(1).key)
    assert again.duplicate and again.seq == first.seq
    info = await js.stream_info("CLAWDEN_INBOUND")
    assert info.state.messages == 1


async def test_bootstrap_twice_and_with_a_changed_consumer_ends_in_the_intended_config(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await ensure_streams(js)
    for stream in STREAMS:
        info = await js.stream_info(stream.name)
        assert info.config.subjects == list(stream.subjects)
        assert info.config.duplicate_window == stream.duplicate_window
    consumer = Consumer("CLAWDEN_INBOUND", "router", subjects.ALL_INBOUND, ack_wait=30.0)
    await ensure_consumer(js, consumer)
    changed = Consumer("CLAWDEN_INBOUND", "router", subjects.inbound("local"), ack_wait=7.0, max_deliver=3)
    await ensure_consumer(js, changed)
    info = await js.consumer_info("CLAWDEN_INBOUND", "router")
    assert info.config.ack_wait == 7.0
    assert info.config.max_deliver == 3
    assert info.config.filter_subject == subjects.inbound("local")


async def test_malformed_message_is_logged_and_terminated_and_consuming_goes_on(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await js.publish(subjects.inbound("local"), b'{"type":"inbound.message","text":42}')
    await js.publish(subjects.inbound("local"), b"not json at all")
    await publish(js, subjects.inbound("local"), message(2), msg_id=message(2).key)
    received: list[ev.InboundMessage] = []
    stopping = asyncio.Event()

    async def handler(event: ev.InboundMessage, msg: Msg) -> None:
        received.append(event)
        stopping.set()

    stats = ConsumeStats()
    consumer = Consumer("CLAWDEN_INBOUND", "t", subjects.ALL_INBOUND, ack_wait=1.0)
    with caplog.at_level(logging.ERROR, logger="clawden.bus"):
        sub = await bind(js, consumer)
        await asyncio.wait_for(consume(sub, ev.InboundMessage, handler, stopping=stopping, stats=stats), 10)
    assert [m.text for m in received] == ["hello 2"]
    assert stats.poisoned == 2
    assert "at `$.text`" in caplog.text and "JSON is malformed" in caplog.text
    await nc.flush()  # the terms have reached the server: a termed message is no longer pending, so never redelivered
    info = await js.consumer_info("CLAWDEN_INBOUND", "t")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0 and info.num_pending == 0  # none nak'd either


async def test_a_failing_handler_gets_the_message_again(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    await publish(js, subjects.inbound("local"), message(3), msg_id=message(3).key)
    deliveries: list[int] = []
    stopping = asyncio.Event()

    async def handler(event: ev.InboundMessage, msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered)
        if len(deliveries) == 1:
            raise RuntimeError("database locked")
        stopping.set()

    consumer = Consumer("CLAWDEN_INBOUND", "flaky", subjects.ALL_INBOUND)
    sub = await bind(js, consumer)
    await asyncio.wait_for(consume(sub, ev.InboundMessage, handler, stopping=stopping), 10)
    assert deliveries == [1, 2]
