"""Chats talking to a whole Clawden whose bus is a three-node cluster while one node is killed, and the
count of what was lost, duplicated or misrouted: shared by tests/cluster and bench/cluster.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from tests.chaos import chaos
from tests.cluster.nodes import Cluster
from tests.e2e.harness import Stack
from tests.eventually import eventually


async def wake_leader(stack: Stack, nodes: Cluster) -> int:
    """The node leading the wake stream, the one whose loss interrupts the most (every turn passes it)."""
    nc = await stack.connect()
    try:
        info = await nc.jetstream().stream_info("CLAWDEN_WAKE")
        leader = info.cluster.leader if info.cluster else ""
    finally:
        await nc.close()
    return next(n for n, node in enumerate(nodes.nodes) if (leader or "").endswith(node.name))


async def run(
    stack: Stack,
    nodes: Cluster,
    *,
    chats: int,
    messages: int,
    reply_timeout: float = 180,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, int], list[chaos.Chat]]:
    """`chats` chats send `messages` each, one at a time as people type; once every chat has had a reply,
    the wake stream's leader node is SIGKILLed, and the rest is sent to the two that remain."""
    talking = [chaos.Chat(f"cluster-{i}") for i in range(chats)]
    over = asyncio.Event()
    over.set()  # each chat stops at `messages`: the kill comes mid-way, not at the end
    traffic = asyncio.gather(*(chaos.talk(stack, c, messages, reply_timeout, over) for c in talking))
    try:
        await eventually(lambda: all(c.replies for c in talking) or traffic.done(), reply_timeout)
        victim = await wake_leader(stack, nodes)
        log(f"kill: NATS {nodes.nodes[victim].name}, the wake stream's leader")
        nodes.kill(victim)
        await traffic
    finally:
        traffic.cancel()
        with contextlib.suppress(BaseException):
            await traffic
    return chaos.check(talking), talking
