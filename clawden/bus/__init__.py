"""The bus contract: subjects, events, streams, and the connection helpers every service uses."""

from clawden.bus import events, subjects
from clawden.bus.connection import (
    ConsumeStats,
    Retry,
    bind,
    connect,
    consume,
    consume_batches,
    nak,
    publish,
    publish_stored,
    stored_at,
)
from clawden.bus.streams import STREAMS, Consumer, ensure_consumer, ensure_streams

__all__ = [
    "STREAMS",
    "ConsumeStats",
    "Consumer",
    "Retry",
    "bind",
    "connect",
    "consume",
    "consume_batches",
    "ensure_consumer",
    "ensure_streams",
    "events",
    "nak",
    "publish",
    "publish_stored",
    "stored_at",
    "subjects",
]
