"""The router process: inbound chat events in, wake events for sessions out."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg

from clawden.bus import ConsumeStats, bind, consume, publish, subjects
from clawden.bus import events as ev
from clawden.bus.streams import router_inbound
from clawden.runtime import ServiceContext
from services.router.engage import Drop, command_of, decide
from services.router.store import RouterStore

log = logging.getLogger("clawden.router")

DEFAULT_GROUP = "main"
LOCAL_CHANNEL = "local"
LOCAL_CHATS = "*"  # every terminal chat on this machine belongs to its owner


class Router:
    def __init__(self, ctx: ServiceContext, store: RouterStore) -> None:
        self.ctx = ctx
        self.store = store

    async def on_inbound(self, event: ev.InboundMessage | ev.InboundAction, msg: Msg) -> None:
        if isinstance(event, ev.InboundAction):
            log.info("button click %s ignored: approvals are not wired yet", event.key)
            return
        decision = decide(event, await self.store.wirings(event.route.channel))
        if isinstance(decision, Drop):
            log.info("dropped %s: %s", event.key, decision.reason)
            await self.store.record_drop(event.key, event.route.channel, event.route.chat_id,
                                         event.sender.id, decision.reason)
            return
        runner = self.ctx.config.runner.id
        command = command_of(event.text)
        for engagement in decision:
            session_id = await self.store.session_for(
                engagement.agent_group, event.route.channel, event.route.chat_id, event.route.thread_id,
                runner)
            wake = ev.Wake(
                session_id=session_id, agent_group=engagement.agent_group, route=engagement.route,
                command=command,
                message=ev.WakeMessage(id=event.key, kind="chat", text=event.text, sender=event.sender,
                                       sent_at=event.sent_at, attachments=event.attachments),
            )
            # Acked only after every wake is stored: a crash here replays, and the key dedupes.
            await publish(self.ctx.js, subjects.wake(runner), wake, msg_id=wake.key)
            log.info("wake %s for %s", session_id, event.key, extra={"session_id": session_id})


async def main(ctx: ServiceContext) -> None:
    store = await RouterStore.open(ctx.config.data_dir / "router.db")
    try:
        if await store.ensure_default_group(DEFAULT_GROUP, DEFAULT_GROUP, LOCAL_CHANNEL, LOCAL_CHATS):
            log.info("created agent group %r wired to the %s channel", DEFAULT_GROUP, LOCAL_CHANNEL)
        router = Router(ctx, store)
        stats = ConsumeStats()
        ctx.stats["inbound"] = stats
        sub = await bind(ctx.js, router_inbound())
        await ctx.ready()
        await consume(sub, ev.InboundMessage | ev.InboundAction,  # type: ignore[arg-type]
                      router.on_inbound, stopping=ctx.stopping, stats=stats)
    finally:
        await store.close()
