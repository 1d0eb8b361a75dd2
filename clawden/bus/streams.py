"""JetStream streams and durable consumers, and the idempotent bootstrap that makes them so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError, ServiceUnavailableError

from clawden.bus import subjects

log = logging.getLogger("clawden.bus")
T = TypeVar("T")
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Stream:
    name: str
    subjects: tuple[str, ...]
    max_age: float
    # Dedupe horizon for Nats-Msg-Id: as long as any publisher might retry or replay.
    duplicate_window: float
    max_bytes: int = 1 << 30
    # A record per subject, not a log (-1: no limit): with 1 the stream keeps each subject's last message.
    max_msgs_per_subject: int = -1
    # Readers may ask any replica for a subject's last message (`$JS.API.DIRECT.GET`) rather than the leader.
    allow_direct: bool = False

    def config(self, replicas: int = 1) -> StreamConfig:
        """`replicas`: the copies JetStream keeps (`nats.replicas`: 1, or 3 on a cluster of three)."""
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window,
            num_replicas=replicas,
            max_msgs_per_subject=self.max_msgs_per_subject,
            allow_direct=self.allow_direct,
        )


STREAMS: tuple[Stream, ...] = (
    Stream("CLAWDEN_INBOUND", (subjects.ALL_INBOUND,), max_age=7 * DAY, duplicate_window=DAY),
    Stream("CLAWDEN_OUTBOUND", (subjects.ALL_OUTBOUND,), max_age=7 * DAY, duplicate_window=DAY),
    Stream("CLAWDEN_RECEIPTS", (subjects.ALL_RECEIPTS,), max_age=7 * DAY, duplicate_window=DAY),
    Stream("CLAWDEN_WAKE", (subjects.ALL_WAKES,), max_age=7 * DAY, duplicate_window=DAY),
    # Agents' task operations in (for the scheduler), and each due run out (for the router).
    Stream("CLAWDEN_TASKS", (subjects.ALL_TASKS, subjects.TASK_DUE), max_age=7 * DAY, duplicate_window=DAY),
    # allow_direct: a runner that takes a session over reads the decision already given to a question its old runner
    # asked (a direct get is granted by subject, so it reads decisions only, never the requests' cards).
    Stream("CLAWDEN_APPROVALS", (subjects.ALL_APPROVALS,), max_age=30 * DAY, duplicate_window=DAY, allow_direct=True),
    # Raw webhook deliveries the front door verified, kept until their bridge has read them.
    Stream("CLAWDEN_WEBHOOKS", (subjects.ALL_WEBHOOKS,), max_age=7 * DAY, duplicate_window=DAY),
    # Which runner each session is on (`SessionPlaced`), the last per session, kept as long as the session.
    Stream(
        "CLAWDEN_PLACEMENT",
        (subjects.ALL_PLACEMENTS,),
        max_age=0.0,
        duplicate_window=DAY,
        max_msgs_per_subject=1,
        allow_direct=True,
    ),
    Stream("CLAWDEN_EVENTS", (subjects.ALL_EVENTS,), max_age=30 * DAY, duplicate_window=120.0),
    # Each bridge's shared sent-log (clawden/bus/sentlog.py): the last record of each part of each outbound
    # message, kept past the 7 days an outbound event may be redelivered, and read by direct get.
    Stream(
        "CLAWDEN_SENT",
        (subjects.ALL_SENT,),
        max_age=8 * DAY,
        duplicate_window=120.0,
        max_msgs_per_subject=1,
        allow_direct=True,
    ),
)


@dataclass(frozen=True)
class Consumer:
    stream: str
    durable: str
    filter_subject: str
    ack_wait: float = 30.0
    max_deliver: int = 20
    # Redelivery spacing after a nak-less timeout; a nak carries its own delay.
    backoff: tuple[float, ...] = ()
    max_ack_pending: int = 256
    # A durable created late (a terminal that was never open) starts at new messages; the
    # policy is fixed at creation, since the server refuses to change it later.
    deliver_new: bool = False

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            # A name makes the client create it at `CONSUMER.CREATE.<stream>.<name>.<filter>`, which the
            # server checks against the config: a NATS permission can then pin both (natsauth.py).
            name=self.durable,
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW if self.deliver_new else DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            backoff=list(self.backoff) or None,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject,
        )


def given_up(consumer: Consumer) -> str:
    """Where JetStream says it gave up on a message of the durable: its max_deliver deliveries all naked or timed
    out. It is not delivered again, so a reader logs each one (`Puller`): no message ends unsaid."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{consumer.stream}.{consumer.durable}"


def router_inbound() -> Consumer:
    return Consumer("CLAWDEN_INBOUND", "router", subjects.ALL_INBOUND)


def router_agents() -> Consumer:
    # What agents send each other: the agent channel's outbound lanes, which the router delivers as wakes.
    return Consumer("CLAWDEN_OUTBOUND", "router-agents", subjects.outbound_all("agent"))


def router_due() -> Consumer:
    # The scheduler's due runs: the router wakes each task's session on its runner now, at its epoch.
    return Consumer("CLAWDEN_TASKS", "router-due", subjects.TASK_DUE)


def router_decisions() -> Consumer:
    # Every requester's decisions share these subjects; the router skips ids it did not ask about.
    return Consumer("CLAWDEN_APPROVALS", "router-decisions", f"{subjects.PREFIX}.approval.decision.>")


def approvals_requests() -> Consumer:
    return Consumer("CLAWDEN_APPROVALS", "approvals", subjects.APPROVAL_REQUEST)


def approvals_clicks() -> Consumer:
    return Consumer("CLAWDEN_APPROVALS", "approvals-clicks", subjects.APPROVAL_CLICK)


def approvals_receipts() -> Consumer:
    # The platform id of each card, so expiry can edit it; every other receipt is skipped. A new
    # durable starts at new receipts: old ones cannot name a card this service sent.
    return Consumer("CLAWDEN_RECEIPTS", "approvals-receipts", subjects.ALL_RECEIPTS, deliver_new=True)


def approvals_inbound() -> Consumer:
    # Read only, to learn each user's direct chat (where their cards go); the router still routes.
    return Consumer("CLAWDEN_INBOUND", "approvals-inbound", subjects.ALL_INBOUND, deliver_new=True)


def runner_wake(runner_id: str) -> Consumer:
    # A container cold start can take seconds; the runner also sends in_progress while busy.
    return Consumer("CLAWDEN_WAKE", f"runner-{runner_id}", subjects.wake(runner_id), ack_wait=60.0)


def runner_receipts(runner_id: str) -> Consumer:
    return Consumer("CLAWDEN_RECEIPTS", f"runner-{runner_id}-receipts", subjects.ALL_RECEIPTS)


def runner_decisions(runner_id: str) -> Consumer:
    return Consumer("CLAWDEN_APPROVALS", f"runner-{runner_id}-decisions", f"{subjects.PREFIX}.approval.decision.>")


def bridge_outbound(channel: str, lane: int) -> Consumer:
    # One message in flight per lane: a chat's messages leave in order, even across a bridge crash (with
    # more pending, the next process would be handed newer ones before the old ones' redelivery). The
    # bridge signals in_progress while it works, so a crash delays redelivery by at most ack_wait.
    return Consumer(
        "CLAWDEN_OUTBOUND",
        f"channel-{channel}-{lane}",
        subjects.outbound_lane(channel, lane),
        ack_wait=15.0,
        max_deliver=50,
        max_ack_pending=1,
    )


def bridge_lanes(channel: str) -> tuple[Consumer, ...]:
    """A bridge's outbound durables, one per lane, read concurrently (subjects.OUTBOUND_LANES)."""
    return tuple(bridge_outbound(channel, lane) for lane in range(subjects.OUTBOUND_LANES))


def bridge_webhooks(channel: str) -> Consumer:
    # The deliveries the front door stored for this bridge; order across deliveries is the platform's
    # problem (status callbacks arrive out of order anyway), so several may be in flight.
    return Consumer(
        "CLAWDEN_WEBHOOKS",
        f"channel-{channel}-webhooks",
        subjects.webhook(channel),
        ack_wait=30.0,
        max_deliver=50,
        max_ack_pending=64,
    )


def scheduler_tasks() -> Consumer:
    # One op in flight: a task's create, update and cancel are applied in the order they were sent.
    return Consumer("CLAWDEN_TASKS", "scheduler", subjects.ALL_TASKS, max_ack_pending=1)


def scheduler_orphans() -> Consumer:
    # The router's word that a task's session is no more (`TaskOrphaned`): the task is paused (twice is harmless).
    return Consumer("CLAWDEN_EVENTS", "scheduler-orphans", subjects.event("router", "task_orphaned"))


def scheduler_chat_moves() -> Consumer:
    # The router's word that a chat has a new id: the tasks aimed at it follow (applying one twice is harmless).
    return Consumer("CLAWDEN_EVENTS", "scheduler-chat-moves", subjects.event("router", "chat_moved"))


async def _answered(call: Callable[[], Awaitable[T]], notifier: Any = None) -> T:
    """`call`, a JetStream API request, asked again until JetStream answers it. A cluster's JetStream answers
    only once its nodes have elected a meta leader (at a cold start, or after losing a majority): until then a
    request times out, finds no responder or gets a 503. Each ask is bounded by the client's request timeout;
    the pause only paces the asking."""
    while True:
        try:
            return await call()
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            note = f"waiting for JetStream to answer ({type(exc).__name__}; a cluster still electing its leader?)"
            log.warning("%s", note)
            if notifier is not None:
                notifier.status(note)
            await asyncio.sleep(1.0)


async def ensure_streams(
    js: JetStreamContext,
    streams: tuple[Stream, ...] = STREAMS,
    *,
    replicas: int | None = None,
    notifier: Any = None,
) -> None:
    """Create each stream, or update it to the intended config. Safe to run from every service, and at any
    moment: a JetStream that does not answer yet is waited for (with a note to `notifier`), not an error.

    `replicas` is `nats.replicas`, which the services pass: it also changes an existing stream's count (on a
    cluster, a stream a client made with one copy becomes R3 once a service with replicas = 3 starts). A client
    that does not know it (`clawden chat`, a test) passes None: a new stream gets 1, an existing one keeps
    its count, so it never shrinks a cluster's streams. Durables follow their stream's count."""
    for stream in streams:
        try:
            info = await _answered(partial(js.stream_info, stream.name), notifier)
        except NotFoundError:
            await _answered(partial(js.add_stream, stream.config(replicas or 1)), notifier)
        else:
            config = stream.config(replicas or info.config.num_replicas or 1)
            await _answered(partial(js.update_stream, config), notifier)


async def wait_streams(js: JetStreamContext, notifier: Any = None, streams: tuple[Stream, ...] = STREAMS) -> None:
    """For a service that may not create streams: wait, with a note, until the core services have."""
    for stream in streams:
        while True:
            try:
                await _answered(partial(js.stream_info, stream.name), notifier)
                break
            except NotFoundError:
                if notifier is not None:
                    notifier.status(f"waiting for stream {stream.name} (is the router running?)")
                await asyncio.sleep(1.0)


async def ensure_consumer(js: JetStreamContext, consumer: Consumer) -> None:
    """Create or update a durable (add_consumer updates an existing one; pull_subscribe would not)."""
    await js.add_consumer(consumer.stream, consumer.config())
